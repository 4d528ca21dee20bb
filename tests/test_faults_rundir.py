"""Fault injection on run directories: what a run directory, a saved config or a command line
can make the commands delete, overwrite, write outside the run, or run twice at once."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import DictConfig

from introspect.config import ConfigError, load_config, load_run_config
from introspect.jobs.job import job_settings
from introspect.runs.lock import LOCK_FILE, LockError, acquire_lock
from introspect.runs.rundir import check_run_dir
from introspect.runs.status import update_status


def check_config(cfg: DictConfig) -> Path:
    """``check_run_dir`` for the run of ``cfg``."""
    settings = job_settings(cfg)
    return check_run_dir(settings.run, settings.config)


REPO = Path(__file__).resolve().parents[1]

# A run of a few seconds: one epoch per stage, no corruptions.
QUICK = [
    "data=synthetic",
    "data.num_samples=96",
    "data.image_size=8",
    "stage1.epochs=1",
    "stage2.head.epochs=1",
    "stage2.head.hidden=[16]",
    "eval.corruptions=[]",
    "trainer.enable_progress_bar=false",
]
# Runs a command's main and reports whether torch or Lightning got imported.
LIGHT = (
    "import sys, {script}; rc = {script}.main(sys.argv[1:]); "
    "print(sorted({{'torch', 'lightning'}} & set(sys.modules))); sys.exit(rc)"
)


# train.py whose data loading takes 3 s (as a real data set's does): the window in which two
# processes that both passed the checks would both start writing the run.
SLOW_DATA = """
import sys, time
sys.path.insert(0, {repo!r})
import train
import introspect.jobs.train as pipeline
build_data = pipeline.build_data
def slow_build_data(cfg):
    time.sleep(3)
    return build_data(cfg)
pipeline.build_data = slow_build_data
sys.exit(train.main(sys.argv[1:]))
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}


def _start(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _python(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600
    )


def _light(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``script``.main(args) in a subprocess; its stdout is the heavy modules it imported."""
    return _python(["-c", LIGHT.format(script=script), *args])


def _one_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture(scope="module")
def race(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[subprocess.Popen[str]], Path]:
    """Two train.py (with slow data loading) started at once into one run directory; the
    finished run is shared by the module's tests (each copies it)."""
    tmp = tmp_path_factory.mktemp("faults")
    run_dir = tmp / "raced"
    script = tmp / "slow_train.py"
    script.write_text(SLOW_DATA.format(repo=str(REPO)))
    args = [str(script), *QUICK, f"run.dir={run_dir}", f"stage2.cache_dir={tmp / 'c'}"]
    procs = [_start(args), _start(args)]
    for proc in procs:
        proc.wait(timeout=600)
    return procs, run_dir


@pytest.fixture
def run(race: tuple[list[subprocess.Popen[str]], Path], tmp_path: Path) -> Path:
    """A private copy of the finished run."""
    copy = tmp_path / "run"
    shutil.copytree(race[1], copy)
    return copy


# --- 1. overwrite deletes a run of ours and nothing else -----------------------------------


@pytest.mark.slow
def test_overwrite_refuses_a_folder_of_user_files(tmp_path: Path) -> None:
    folder = tmp_path / "thesis"
    (folder / "chapters").mkdir(parents=True)
    (folder / "notes.txt").write_text("years of work")
    (folder / "chapters" / "one.tex").write_text("\\chapter{One}")
    before = _tree(folder)
    proc = _light("train", *QUICK, f"run.dir={folder}", "run.overwrite=true")
    line = _one_line(proc)
    assert "holds no run of this program" in line and "run.dir" in line
    assert proc.stdout.strip() == "[]"  # refused before the heavy imports
    assert _tree(folder) == before


def test_overwrite_refuses_a_run_holding_foreign_files(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.yaml").write_text("run: {seed: 5}\n")
    (run_dir / "my-analysis.ipynb").write_text("{}")
    with pytest.raises(ConfigError, match=r"files no run writes \(my-analysis\.ipynb\)"):
        check_config(load_config([*QUICK, f"run.dir={run_dir}", "run.overwrite=true"]))
    assert (run_dir / "my-analysis.ipynb").read_text() == "{}"


def test_a_foreign_config_yaml_is_no_run_of_ours(tmp_path: Path) -> None:
    folder = tmp_path / "service"
    folder.mkdir()
    (folder / "config.yaml").write_text("services: {web: {image: nginx}}\n")
    with pytest.raises(ConfigError, match="holds no run of this program"):
        check_config(load_config([*QUICK, f"run.dir={folder}", "run.overwrite=true"]))
    assert (folder / "config.yaml").is_file()


@pytest.mark.parametrize("where", ["home", "cwd", "parent", "root"])
def test_home_root_and_the_working_directory_are_never_run_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    home, work = tmp_path / "home", tmp_path / "home" / "project"
    work.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    run_dir = {"home": "~/", "cwd": ".", "parent": str(home), "root": "/"}[where]
    for overwrite in ("false", "true"):
        cfg = load_config([*QUICK, f"run.dir={run_dir}", f"run.overwrite={overwrite}"])
        with pytest.raises(ConfigError, match="a run needs its own folder"):
            check_config(cfg)
    assert sorted(p.name for p in home.iterdir()) == ["project"]


@pytest.mark.parametrize("name", ["..", ".", "../../x", "a/b"])
def test_a_run_name_is_one_folder_name(tmp_path: Path, name: str) -> None:
    root = tmp_path / "runs"
    cfg = load_config([*QUICK, f"run.root={root}", f"run.name={name}", "run.overwrite=true"])
    with pytest.raises(ConfigError, match="must be one plain folder name"):
        check_config(cfg)


@pytest.mark.slow
def test_a_bad_run_name_is_one_line_before_any_work(tmp_path: Path) -> None:
    proc = _light("train", *QUICK, f"run.root={tmp_path / 'runs'}", "run.name=../../x")
    assert "must be one plain folder name" in _one_line(proc)
    assert proc.stdout.strip() == "[]"
    assert sorted(tmp_path.iterdir()) == []


# --- 2. one process per run directory and per evaluation -------------------------------------


@pytest.mark.slow
def test_two_trainings_racing_for_one_directory_admit_one(
    race: tuple[list[subprocess.Popen[str]], Path],
) -> None:
    procs, run_dir = race
    outcomes = [(p.returncode, p.stderr.read()) for p in procs]  # type: ignore[union-attr]
    assert sorted(rc for rc, _ in outcomes) == [0, 2], outcomes
    (refused,) = [err.strip().splitlines() for rc, err in outcomes if rc == 2]
    (winner,) = [p.pid for p in procs if p.returncode == 0]
    assert len(refused) == 1, refused
    assert f"run directory {run_dir} is in use by another process (pid {winner} on " in refused[0]
    assert json.loads((run_dir / "status.json").read_text())["state"] == "complete"
    assert not (run_dir / LOCK_FILE).exists()


@pytest.mark.slow
def test_a_held_run_directory_refuses_train_naming_the_holder(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with acquire_lock(run_dir, "test"):
        proc = _python([str(REPO / "train.py"), *QUICK, f"run.dir={run_dir}"])
        line = _one_line(proc)
        assert f"pid {os.getpid()} on {socket.gethostname()}, started " in line
        assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_FILE]  # nothing written
    assert not run_dir.exists()  # the lock made the folder and took it away


@pytest.mark.slow
@pytest.mark.parametrize(
    ("command", "folder"),
    [([], "t"), (["scores"], "scores-t"), (["explain-eval"], "explain-t")],
)
def test_a_held_evaluation_folder_refuses_a_second_evaluation(
    run: Path, command: list[str], folder: str
) -> None:
    out = run / "evaluations" / folder
    with acquire_lock(out, "test"):
        proc = _light("evaluate", *command, f"run={run}", "tag=t")
        line = _one_line(proc)
        assert f"evaluation folder {out} is in use by another process (pid {os.getpid()}" in line
        assert proc.stdout.strip() == "[]"
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]


def test_a_lock_names_its_holder_and_is_released(tmp_path: Path) -> None:
    lock = acquire_lock(tmp_path / "x", "folder x")
    holder = json.loads((tmp_path / "x" / LOCK_FILE).read_text())
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    with pytest.raises(LockError, match=rf"folder x is in use .*pid {os.getpid()} on "):
        acquire_lock(tmp_path / "x", "folder x")
    lock.release()
    assert not (tmp_path / "x").exists()
    acquire_lock(tmp_path / "x", "folder x").release()


@pytest.mark.slow
def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_notice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "x"
    folder.mkdir()
    dead = {"pid": _dead_pid(), "host": socket.gethostname(), "started": "earlier"}
    (folder / LOCK_FILE).write_text(json.dumps(dead))
    with acquire_lock(folder, "folder x"):
        assert json.loads((folder / LOCK_FILE).read_text())["pid"] == os.getpid()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"stale lock of folder x (pid {dead['pid']}" in err[0]
    # Another host's lock cannot be checked from here: it is respected.
    (folder / LOCK_FILE).write_text(json.dumps({**dead, "host": "elsewhere"}))
    with pytest.raises(LockError, match="on elsewhere"):
        acquire_lock(folder, "folder x")


@pytest.mark.slow
def test_an_evaluation_takes_over_the_lock_of_a_killed_one(run: Path) -> None:
    out = run / "evaluations" / "t"
    out.mkdir(parents=True)
    dead = {"pid": _dead_pid(), "host": socket.gethostname(), "started": "earlier"}
    (out / LOCK_FILE).write_text(json.dumps(dead))
    proc = _python([str(REPO / "evaluate.py"), f"run={run}", "tag=t"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "notice: taking over the stale lock" in proc.stderr
    assert (out / "results.json").is_file() and not (out / LOCK_FILE).exists()


# --- 5. writes stay inside the run -----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("link", ["evaluations", "evaluations/t"])
def test_a_symlinked_evaluation_folder_is_refused(run: Path, tmp_path: Path, link: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (run / link).parent.mkdir(exist_ok=True)
    (run / link).symlink_to(outside, target_is_directory=True)
    proc = _light("evaluate", f"run={run}", "tag=t")
    assert "is a symbolic link" in _one_line(proc) and proc.stdout.strip() == "[]"
    assert list(outside.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("link", ["logs", "checkpoints", "stage2"])
def test_resume_refuses_a_symlinked_output_folder(run: Path, tmp_path: Path, link: str) -> None:
    update_status(run, state="running")
    outside = tmp_path / "outside"
    shutil.move(run / link, outside)
    (run / link).symlink_to(outside, target_is_directory=True)
    cfg = load_config([*QUICK, f"run.dir={run}", "run.resume=true"])
    with pytest.raises(ConfigError, match=f"{link} is a symbolic link"):
        check_config(cfg)


def _plant(run: Path, **paths: str) -> None:
    """Set dotted ``paths`` in the run's saved config.yaml, as a sent run directory might."""
    saved = yaml.safe_load((run / "config.yaml").read_text())
    for key, value in paths.items():
        section, _, leaf = key.partition("__")
        saved[section][leaf] = value
    (run / "config.yaml").write_text(yaml.safe_dump(saved))


@pytest.mark.slow
def test_saved_cache_folders_are_not_created_by_a_reevaluation(run: Path, tmp_path: Path) -> None:
    planted = {
        "eval__cache_dir": str(tmp_path / "planted-eval-cache"),
        "stage2__cache_dir": str(tmp_path / "planted-feature-cache"),
        "data__root": str(tmp_path / "planted-root"),
    }
    _plant(run, **planted)
    proc = _python(
        [str(REPO / "evaluate.py"), f"run={run}", "eval.corruptions=[contrast]",
         "eval.severities=[5]", "tag=c"]
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run / "evaluations" / "c" / "results.json").is_file()
    assert [p for p in planted.values() if Path(p).exists()] == []


@pytest.mark.slow
def test_saved_paths_are_replaced_unless_the_command_line_gives_them(
    run: Path, tmp_path: Path
) -> None:
    from introspect.config.schema import Config

    defaults = Config()
    _plant(
        run,
        eval__cache_dir=str(tmp_path / "e"),
        stage2__cache_dir=str(tmp_path / "s"),
        data__root=str(tmp_path / "r"),
        data__download=True,
    )
    cfg = load_run_config(run)
    assert cfg.eval.cache_dir == defaults.eval.cache_dir
    assert cfg.stage2.cache_dir == defaults.stage2.cache_dir
    assert cfg.data.root == defaults.data.root and cfg.data.download is False
    given = load_run_config(
        run, [f"eval.cache_dir={tmp_path / 'mine'}", f"data.root={tmp_path / 'r'}"]
    )
    assert given.eval.cache_dir == str(tmp_path / "mine") and given.data.root == str(tmp_path / "r")
    assert given.stage2.cache_dir == defaults.stage2.cache_dir
    # CIFAR's images live under data.root: an existing saved root is read, never downloaded to.
    (tmp_path / "r").mkdir()
    _plant(run, data__source="cifar10")
    cfg = load_run_config(run)
    assert cfg.data.root == str(tmp_path / "r") and cfg.data.download is False


# --- 6. no command replaces a record ---------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("record", ["results.json", "config.yaml", "checkpoints/stage1-best.ckpt"])
def test_explain_out_never_replaces_a_record(run: Path, record: str) -> None:
    before = (run / record).read_bytes()
    for extra in ([], ["overwrite=true"]):
        proc = _light("evaluate", "explain", f"run={run}", f"out={run / record}", *extra)
        assert "is a record of a run and is never replaced" in _one_line(proc)
        assert proc.stdout.strip() == "[]"
    assert (run / record).read_bytes() == before


@pytest.mark.slow
def test_explain_out_replaces_an_existing_file_only_when_asked(run: Path, tmp_path: Path) -> None:
    target = tmp_path / "figure.png"
    target.write_bytes(b"my own figure")
    proc = _light("evaluate", "explain", f"run={run}", f"out={target}", "n=1")
    assert "pass overwrite=true" in _one_line(proc)
    assert target.read_bytes() == b"my own figure"
    not_png = _light("evaluate", "explain", f"run={run}", f"out={tmp_path / 'f.txt'}")
    assert "must name a .png file" in _one_line(not_png)
    proc = _python(
        [str(REPO / "evaluate.py"), "explain", f"run={run}", f"out={target}", "n=1",
         "overwrite=true"]
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert target.read_bytes()[:4] == b"\x89PNG" and not (tmp_path / LOCK_FILE).exists()


@pytest.mark.slow
def test_explain_network_keeps_existing_figures_unless_asked(run: Path, tmp_path: Path) -> None:
    folder = tmp_path / "figures"
    folder.mkdir()
    (folder / "tsne.png").write_bytes(b"mine")
    proc = _light("evaluate", "explain-network", f"run={run}", f"out={folder}", "n=20")
    assert "tsne.png exists; pass overwrite=true" in _one_line(proc)
    assert (folder / "tsne.png").read_bytes() == b"mine"
    proc = _light("evaluate", "explain-network", f"run={run}", f"out={run / 'stage2'}")
    assert "is a record of a run" in _one_line(proc)
