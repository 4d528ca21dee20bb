"""Fault injection: edited records, tampered checkpoints and heads, bad data, a full disk,
corrupt head files, Ctrl-C, DDP stops and kill -9 at more points of every stage."""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from introspect.config import load_config
from introspect.jobs.settings import train_settings
from introspect.runs.status import update_status
from tests.conftest import one_thread_env, run_isolated
from tests.test_pipeline import TINY

REPO = Path(__file__).resolve().parents[1]

# Runs train.py's main after installing a fault at one point of the pipeline: argv[1] names it,
# the rest is train.py's command line. "kill-*" points end the process like SIGKILL.
INJECT = """
import errno, os, signal, sys
sys.path.insert(0, {repo!r})
import train
# Ctrl-C as in a terminal: a process started in the background (nohup, a CI runner) inherits
# SIGINT ignored, and Python then never raises KeyboardInterrupt.
signal.signal(signal.SIGINT, signal.default_int_handler)
where, argv = sys.argv[1], sys.argv[2:]
def no_space(path):
    raise OSError(errno.ENOSPC, "No space left on device", str(path))
if where == "enospc-checkpoint":  # torch drops the errno: what a full disk gives Lightning
    import lightning.fabric.plugins.io.torch_io as io
    def failing(checkpoint, filepath):
        raise RuntimeError("[enforce fail at inline_container.cc:626] . PytorchStreamWriter "
                           "failed writing file data/0: file write failed")
    io._atomic_save = failing
elif where == "enospc-head":
    import introspect.stages.heads as s2
    s2._save_atomic = lambda obj, path: no_space(path)
elif where == "enospc-results":
    import introspect.stages.evaluate as report
    report.write_sealed = lambda path, record, run_dir, beside=(): no_space(path)
elif where == "sigint-stage1":  # Ctrl-C inside Lightning's fit (it turns it into SystemExit)
    from introspect.models.feedforward import FeedForwardClassifier
    def on_train_epoch_start(self):
        if self.current_epoch == 1:
            os.kill(os.getpid(), signal.SIGINT)
    FeedForwardClassifier.on_train_epoch_start = on_train_epoch_start
elif where == "sigint-stage2":  # Ctrl-C outside any trainer: a plain KeyboardInterrupt
    import introspect.stages.heads as s2
    save = s2._save_atomic
    def interrupted_save(obj, path):
        if path.name == "control.pt":
            os.kill(os.getpid(), signal.SIGINT)
        return save(obj, path)
    s2._save_atomic = interrupted_save
elif where == "kill-stage1-first-batch":  # before any checkpoint exists
    from introspect.models.feedforward import FeedForwardClassifier
    FeedForwardClassifier.on_train_batch_start = lambda self, batch, i: os._exit(9)
elif where == "kill-stage2-before-heads":  # features extracted, no head trained or saved
    import introspect.stages.heads as s2
    s2._train_together = lambda *args: os._exit(9)
elif where == "kill-evaluation-before-record":  # every split evaluated, no results.json yet
    import introspect.stages.evaluate as report
    report.write_sealed = lambda path, record, run_dir, beside=(): os._exit(9)
else:
    raise SystemExit(f"unknown point {{where}}")
sys.exit(train.main(argv))
"""


def _env() -> dict[str, str]:
    return one_thread_env()


def _python(args: list[str]) -> subprocess.CompletedProcess[str]:
    return run_isolated([sys.executable, *args], cwd=REPO, env=_env(), timeout=600)


def _inject(tmp: Path, where: str, *args: str) -> subprocess.CompletedProcess[str]:
    script = tmp / "inject.py"
    script.write_text(INJECT.format(repo=str(REPO)))
    return _python([str(script), where, *args])


def _run_args(tmp: Path, name: str) -> list[str]:
    return [*TINY, f"run.dir={tmp / name}", f"stage2.cache_dir={tmp / ('cache-' + name)}"]


def _resume(args: list[str]) -> int:
    """Continue the run of ``args`` through train.py in a process like the one of the
    uninterrupted run (same threads: results are compared bit for bit)."""
    proc = _python([str(REPO / "train.py"), *args, "run.resume=true"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.returncode


def _results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def _status(run_dir: Path) -> dict:
    return json.loads((run_dir / "status.json").read_text())


def _lines(text: str) -> list[str]:
    return [line for line in text.strip().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def finished(finished_run: Path) -> Path:
    """One uninterrupted tiny run (through train.py), shared, never modified by the tests."""
    return finished_run


def _copy(run_dir: Path, tmp_path: Path, name: str = "copy") -> Path:
    out = tmp_path / name
    shutil.copytree(run_dir, out)
    return out


def _edit_accuracy(run_dir: Path, value: float = 1.0) -> None:
    path = run_dir / "results.json"
    record = json.loads(path.read_text())
    record["splits"]["clean"]["introspective"]["acc"] = value
    path.write_text(json.dumps(record, indent=2))


def _evaluate(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from introspect.cli import evaluate

    rc = evaluate.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


# --- 9. records carry a digest ----------------------------------------------------------------


@pytest.mark.slow
def test_a_record_carries_the_digest_of_its_content_and_files(finished: Path) -> None:
    from introspect.runs.integrity import check_record, content_sha256, file_sha256

    record = _results(finished)
    block = record["integrity"]
    assert block["content_sha256"] == content_sha256(record)
    assert sorted(block["files"]) == [
        "checkpoints/stage1-best.ckpt",
        "checkpoints/stage1-last.ckpt",
        "stage2/control.pt",
        "stage2/control_hp.pt",
        "stage2/introspective.pt",
    ]
    for name, digest in block["files"].items():
        assert file_sha256(finished / name) == digest
    assert check_record(finished / "results.json", finished) == "verified"


@pytest.mark.slow
def test_compare_refuses_an_edited_record_and_flags_it_with_allow_modified(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    edited = _copy(finished, tmp_path, "edited")
    _edit_accuracy(edited)
    out = tmp_path / "cmp"
    rc, _, err = _evaluate(["compare", str(edited), "--out", str(out), "--no-wandb"], capsys)
    assert rc == 2 and not out.exists()
    (line,) = _lines(err)
    assert str(edited / "results.json") in line and "--allow-modified" in line
    assert "content differs" in line

    rc, printed, _ = _evaluate(
        ["compare", str(edited), "--out", str(out), "--no-wandb", "--allow-modified"], capsys
    )
    assert rc == 0
    # The console wraps long lines at 100 columns (on spaces): compare its words.
    for text in (" ".join(printed.split()), (out / "comparison.md").read_text()):
        assert "(modified)" in text and "100.00" in text
        assert f"Note: {edited / 'results.json'} does not match its integrity digest" in text
    assert "(modified)" in (out / "comparison.csv").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["checkpoints/stage1-best.ckpt", "stage2/introspective.pt"])
def test_a_tampered_checkpoint_or_head_is_detected(
    finished: Path, tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    tampered = _copy(finished, tmp_path, "tampered")
    with (tampered / name).open("ab") as fh:
        fh.write(b"\0")
    rc, _, err = _evaluate(["compare", str(tampered), "--out", str(tmp_path / "c")], capsys)
    assert rc == 2
    (line,) = _lines(err)
    assert f"{name} changed since" in line and "--allow-modified" in line
    (tampered / name).unlink()
    rc, _, err = _evaluate(["compare", str(tampered), "--out", str(tmp_path / "c")], capsys)
    assert rc == 2 and f"{name} is missing" in err


@pytest.mark.slow
def test_a_record_without_digest_is_used_and_marked_unverified(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    older = _copy(finished, tmp_path, "older")
    record = _results(older)
    del record["integrity"]  # as written before records were sealed
    (older / "results.json").write_text(json.dumps(record))
    out = tmp_path / "cmp"
    rc, printed, _ = _evaluate(["compare", str(older), "--out", str(out), "--no-wandb"], capsys)
    assert rc == 0 and "(modified)" not in printed
    # The table wraps long lines anywhere, also inside the path: compare without whitespace.
    note = (
        f"1 record(s) carry no integrity digest (written by an older version), so they could "
        f"not be verified: {older / 'results.json'}."
    )
    assert "".join(note.split()) in "".join(printed.split())


@pytest.mark.slow
@pytest.mark.parametrize("command", [[], ["scores"]])
def test_evaluate_and_scores_refuse_an_edited_record_before_any_work(
    finished: Path, tmp_path: Path, command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    edited = _copy(finished, tmp_path, "edited")
    _edit_accuracy(edited)
    rc, _, err = _evaluate([*command, f"run={edited}"], capsys)
    assert rc == 2
    (line,) = _lines(err)
    assert str(edited / "results.json") in line and "--allow-modified" in line
    assert not (edited / "evaluations").exists()


@pytest.mark.slow
def test_reevaluation_with_allow_modified_flags_its_table_and_record(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    edited = _copy(finished, tmp_path, "edited")
    _edit_accuracy(edited)
    args = [f"run={edited}", "eval.corruptions=[contrast]", "eval.severities=[5]", "tag=t"]
    rc, printed, err = _evaluate([*args, "--allow-modified"], capsys)
    assert rc == 0, err[-2000:]
    note = f"Note: {edited / 'results.json'} does not match its integrity digest"
    assert note in err and note in " ".join(printed.split())  # the console wraps at 100
    out = edited / "evaluations" / "t"
    assert note in (out / "table.md").read_text()
    again = _results(out)
    assert again["run"]["note"].startswith(note)
    # The re-evaluation's own record is sealed against the run's files.
    from introspect.runs.integrity import check_record

    assert check_record(out / "results.json", edited) == "verified"


@pytest.mark.slow
def test_scores_with_allow_modified_flag_their_table(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    edited = _copy(finished, tmp_path, "edited")
    _edit_accuracy(edited)
    args = [f"run={edited}", "scores.purview=false", "scores.max_samples=16", "tag=t"]
    rc, _, err = _evaluate(["scores", *args, "scores.trust=false", "--allow-modified"], capsys)
    assert rc == 0, err[-2000:]
    text = (edited / "evaluations" / "scores-t" / "scores.md").read_text()
    assert text.startswith(f"Note: {edited / 'results.json'} does not match")


# --- 10. data verified before work --------------------------------------------------------


def _image_tree(root: Path, per_class: int = 8) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(2):
        folder = root / f"class{c}"
        folder.mkdir(parents=True)
        for k in range(per_class):
            pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{k:02d}.png")
    return root


def _imagefolder_args(tree: Path, tmp: Path) -> list[str]:
    kept = [a for a in TINY if not a.startswith(("data", "eval."))]
    return [
        *kept,
        "data=imagefolder",
        f"data.path={tree}",
        "data.image_size=8",
        "data.test_fraction=0.25",
        "eval.corruptions=[contrast]",
        "eval.severities=[1]",
        f"run.dir={tmp / 'run'}",
        f"stage2.cache_dir={tmp / 'cache'}",
    ]


@pytest.mark.slow
def test_a_corrupt_image_stops_the_run_before_its_directory_or_is_skipped_and_counted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import train
    from introspect.jobs.train import run

    tree = _image_tree(tmp_path / "tree")
    good = (tree / "class1" / "03.png").read_bytes()
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF  # a damaged byte: the header reads, a checksum fails
    bad = tree / "class1" / "98.png"
    bad.write_bytes(bytes(flipped))
    (tree / "class1" / "99.png").write_bytes(good[: len(good) // 2])  # truncated mid-file
    args = _imagefolder_args(tree, tmp_path)
    assert train.main(args) == 2
    (line,) = _lines(capsys.readouterr().err)
    assert line.startswith(f"error: image file {bad} cannot be read")
    assert "data.skip_bad_files=true" in line
    assert not (tmp_path / "run").exists()

    results = run(load_config([*args, "data.skip_bad_files=true"]))
    assert results["run"]["skipped_bad_files"] == 2
    assert _results(tmp_path / "run")["run"]["skipped_bad_files"] == 2
    assert "skipping 2 unreadable image file(s)" in capsys.readouterr().err


@pytest.mark.slow
def test_a_stray_label_is_refused_unless_num_classes_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import train
    from introspect.stages.stage1 import build_data

    labels = np.arange(120) % 10
    labels[7] = 1000
    data = tmp_path / "data.npz"
    np.savez(data, x=np.zeros((120, 8, 8, 3), np.uint8), y=labels)
    args = [a for a in TINY if not a.startswith("data")]
    args += ["data=npz", f"data.path={data}", f"run.dir={tmp_path / 'run'}"]
    assert train.main(args) == 2
    assert _lines(capsys.readouterr().err) == [
        f"error: {data}: labels run to 1000 but only 11 of the 1001 classes occur; fix the "
        "labels or set data.num_classes=1001"
    ]
    assert not (tmp_path / "run").exists()
    dm = build_data(train_settings(load_config([*args, "data.num_classes=1001"])).stage1)
    assert dm.num_classes == 1001


# --- 11. faults end in one line -------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("point", "stage", "resume"),
    [
        ("enospc-checkpoint", "stage1", False),
        ("enospc-head", "stage2", False),
        ("enospc-results", "evaluation", True),  # resuming from the others is the kill -9 case
    ],
)
def test_a_full_disk_ends_in_one_line_and_the_run_resumes(
    finished: Path, tmp_path: Path, point: str, stage: str, resume: bool
) -> None:
    args = _run_args(tmp_path, "run")
    run_dir = tmp_path / "run"
    proc = _inject(tmp_path, point, *args)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    last = _lines(proc.stderr)[-1]
    assert last.startswith("error: no space left on device while writing ")
    assert last.endswith(f"free space and continue with run.resume=true run.dir={run_dir}")
    status = _status(run_dir)
    assert status["state"] == "failed" and status["error"].startswith("ENOSPC")
    assert status["stage"] == stage and not (run_dir / "results.json").exists()
    if not resume:
        return
    assert _resume(args) == 0
    assert _results(run_dir)["splits"] == _results(finished)["splits"]
    assert _status(run_dir)["state"] == "complete"


@pytest.mark.slow
def test_a_corrupt_head_file_ends_in_one_line(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import train

    unfinished = _copy(finished, tmp_path, "unfinished")
    update_status(unfinished, state="running")
    head = unfinished / "stage2" / "introspective.pt"
    head.write_bytes(head.read_bytes()[:100])  # truncated
    args = [*TINY, f"run.dir={unfinished}", "run.resume=true"]
    assert train.main(args) == 2
    (line,) = _lines(capsys.readouterr().err)
    assert line.startswith(f"error: stage-2 head {head} cannot be loaded")
    assert "delete it and continue with run.resume=true" in line

    # A finished run's head replaced by one of another shape: re-evaluation names it too.
    import torch

    finished_copy = _copy(finished, tmp_path, "finished")
    control = finished_copy / "stage2" / "control.pt"
    state = torch.load(control, weights_only=True)
    torch.save({k: v[..., :1] if v.ndim else v for k, v in state.items()}, control)
    rc, _, err = _evaluate([f"run={finished_copy}", "--allow-modified"], capsys)
    assert rc == 2
    assert _lines(err)[-1].startswith(f"error: stage-2 head {control} cannot be loaded")


@pytest.mark.slow
@pytest.mark.parametrize("point", ["sigint-stage1", "sigint-stage2"])
def test_sigint_is_recorded_as_interrupted_with_one_line(tmp_path: Path, point: str) -> None:
    run_dir = tmp_path / "run"
    proc = _inject(tmp_path, point, *_run_args(tmp_path, "run"))
    assert proc.returncode == 130, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert _lines(proc.stderr)[-1] == (
        f"interrupted: the run in {run_dir} stopped; continue it with run.resume=true "
        f"run.dir={run_dir}"
    )
    status = _status(run_dir)
    assert status["state"] == "interrupted" and status["error"] == "interrupted (SIGINT)"


def test_a_ddp_stop_hints_resume_only_where_a_run_directory_exists(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from introspect.jobs.job import job_settings
    from introspect.runs.distributed import _Watch

    cfg = load_config([*TINY, f"run.dir={tmp_path / 'run'}"])
    env = SimpleNamespace(node_rank=lambda: 0, local_rank=lambda: 0)
    strategy = SimpleNamespace(cluster_environment=env, num_nodes=1)
    watch = _Watch()
    settings = job_settings(cfg)
    watch.start(settings.run, settings.trainer.timeout_s, strategy, 2)  # type: ignore[arg-type]
    watch.report("process 1 of 2 did not answer within trainer.timeout_s=5 s")
    (line,) = _lines(capsys.readouterr().err)
    assert "run.resume" not in line and "no run directory was made yet" in line

    (tmp_path / "run").mkdir()
    update_status(tmp_path / "run", state="running")
    watch = _Watch()
    settings = job_settings(cfg)
    watch.start(settings.run, settings.trainer.timeout_s, strategy, 2)  # type: ignore[arg-type]
    watch.report("process 1 of 2 stopped")
    (line,) = _lines(capsys.readouterr().err)
    assert "continue it with run.resume=true" in line


# --- kill -9 at more points of every stage ---------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("point", "stage"),
    [
        ("kill-stage1-first-batch", "stage1"),
        ("kill-stage2-before-heads", "stage2"),
        ("kill-evaluation-before-record", "evaluation"),
    ],
)
def test_a_run_killed_at_more_points_resumes_to_the_same_results(
    finished: Path, tmp_path: Path, point: str, stage: str
) -> None:
    args = _run_args(tmp_path, "run")
    run_dir = tmp_path / "run"
    killed = _inject(tmp_path, point, *args)
    assert killed.returncode == 9, killed.stderr[-3000:]
    status = _status(run_dir)
    assert status["state"] == "running" and status["stage"] == stage
    assert not (run_dir / "results.json").exists()
    assert _resume(args) == 0
    got, want = _results(run_dir), _results(finished)
    assert got["splits"] == want["splits"] and got["summary"] == want["summary"]
    heads = {k: v for k, v in got["integrity"]["files"].items() if k.startswith("stage2/")}
    assert heads == {k: v for k, v in want["integrity"]["files"].items() if k in heads}
    assert (
        len(heads) == 3
    )  # introspective, control, control_hp: bit-identical to the uninterrupted run
    assert _status(run_dir)["stages_done"] == ["stage1", "stage2", "evaluation"]


def test_errno_of_a_full_disk_is_told_from_other_errors() -> None:
    from introspect.runs.faults import disk_full

    full = OSError(errno.ENOSPC, "No space left on device", "/x/results.json")
    assert disk_full(full, "/x") == "/x/results.json"
    try:
        try:
            raise full
        except OSError as err:
            raise RuntimeError("wrapped") from err
    except RuntimeError as wrapped:
        assert disk_full(wrapped, "/x") == "/x/results.json"
    assert disk_full(OSError(errno.EACCES, "denied"), "/x") is None
    assert disk_full(ValueError("no"), "/x") is None
