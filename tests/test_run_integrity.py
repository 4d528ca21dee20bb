"""Run integrity: untrusted run directories, one run per directory, re-evaluations that keep
the record, resume after a kill in every stage, status, provenance, early errors."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import pytest
from omegaconf import DictConfig, OmegaConf

from introspect.config import ConfigError, load_config, load_run_config, save_config
from introspect.config.schema import RANGES, Config
from introspect.jobs.job import job_settings
from introspect.report.differences import read_predictions
from introspect.runs.rundir import check_run_dir, evaluation_tag
from tests.conftest import one_thread_env, run_isolated
from tests.test_pipeline import TINY


def check_config(cfg: DictConfig) -> Path:
    """``check_run_dir`` for the run of ``cfg``."""
    settings = job_settings(cfg)
    return check_run_dir(settings.run, settings.config)


REPO = Path(__file__).resolve().parents[1]

CELLS = [f"{c}/{s}" for c in ("gaussian_noise", "contrast") for s in (1, 5)]

# Runs train.py's main after making the process die abruptly (os._exit: no cleanup, like
# SIGKILL) at one point of the pipeline: argv[1] names the point, the rest is train.py's.
KILLER = """
import os, sys
sys.path.insert(0, {repo!r})
import train
where, argv = sys.argv[1], sys.argv[2:]
if where == "stage1":  # after epoch 0 was checkpointed, as epoch 1 starts
    from introspect.models.feedforward import FeedForwardClassifier
    def on_train_epoch_start(self):
        if self.current_epoch == 1:
            os._exit(9)
    FeedForwardClassifier.on_train_epoch_start = on_train_epoch_start
elif where == "stage2":  # after the introspective head was saved, before the control is
    import introspect.stages.heads as s2
    save = s2._save_atomic
    def killing_save(obj, path):
        if path.name == "control.pt":  # the heads trained together; resuming trains it alone
            os._exit(9)
        return save(obj, path)
    s2._save_atomic = killing_save
elif where == "evaluation":  # after two of the three split groups were evaluated
    import introspect.stages.evaluation as evaluation
    Evaluator, made = evaluation.Evaluator, []
    def killing_evaluator(*args, **kwargs):
        made.append(1)
        if len(made) == 3:
            os._exit(9)
        return Evaluator(*args, **kwargs)
    evaluation.Evaluator = killing_evaluator
elif where == "fail":  # an ordinary error in stage 2
    import introspect.stages.heads as s2
    def failing(*args, **kwargs):
        raise RuntimeError("injected failure")
    s2.build_head = failing
sys.exit(train.main(argv))
"""


def _env() -> dict[str, str]:
    return one_thread_env()


def _python(args: list[str], *, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return run_isolated([sys.executable, *args], cwd=REPO, env=_env(), timeout=timeout)


def _train(*args: str) -> subprocess.CompletedProcess[str]:
    return _python([str(REPO / "train.py"), *args])


def _run_args(tmp: Path, name: str) -> list[str]:
    return [*TINY, f"run.dir={tmp / name}", f"stage2.cache_dir={tmp / ('cache-' + name)}"]


def _results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


@pytest.fixture(scope="module")
def reference(finished_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted tiny run (through train.py): this module's copy of the shared one
    (its tests write re-evaluations into it)."""
    return Path(shutil.copytree(finished_run, tmp_path_factory.mktemp("integrity") / "reference"))


# --- 1. a run directory is data -------------------------------------------------------------


def _saved_run(tmp_path: Path, **backbone: object) -> Path:
    run_dir = tmp_path / "shared-run"
    run_dir.mkdir()
    cfg = load_config(TINY)
    for key, value in backbone.items():
        cfg.backbone[key] = value
    save_config(cfg, run_dir / "config.yaml")
    return run_dir


@pytest.mark.slow
@pytest.mark.parametrize("command", [[], ["scores"], ["explain"]])
def test_a_run_directory_cannot_run_code(tmp_path: Path, command: list[str]) -> None:
    marker = tmp_path / "pwned"
    run_dir = _saved_run(tmp_path, name="os:system", kwargs={"command": f"touch {marker}"})
    proc = _python([str(REPO / "evaluate.py"), *command, f"run={run_dir}"])
    assert proc.returncode == 2
    assert not marker.exists()
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--trust-run" in lines[0] and "backbone.name" in lines[0]


def test_saved_trust_checkpoint_is_refused_unless_repeated(tmp_path: Path) -> None:
    run_dir = _saved_run(tmp_path, trust_checkpoint=True)
    with pytest.raises(ConfigError, match="trust_checkpoint.*--trust-run"):
        load_run_config(run_dir)
    assert load_run_config(run_dir, ["backbone.trust_checkpoint=true"]).backbone.trust_checkpoint
    assert load_run_config(run_dir, trust_run=True).backbone.trust_checkpoint
    # Switching it off needs no trust.
    assert not load_run_config(run_dir, ["backbone.trust_checkpoint=false"]).backbone[
        "trust_checkpoint"
    ]


def test_code_import_is_honoured_when_given_on_the_command_line(tmp_path: Path) -> None:
    run_dir = _saved_run(tmp_path, name="mypkg.nets:Net")
    with pytest.raises(ConfigError, match="imports a module"):
        load_run_config(run_dir)
    assert load_run_config(run_dir, ["backbone.name=mypkg.nets:Net"]).backbone.name == (
        "mypkg.nets:Net"
    )
    with pytest.raises(ConfigError, match="imports a module"):  # another value is no consent
        load_run_config(run_dir, ["backbone.name=other.mod:Net"])
    assert load_run_config(run_dir, trust_run=True).backbone.name == "mypkg.nets:Net"


# --- 2. one run per directory ---------------------------------------------------------------


@pytest.mark.slow
def test_a_second_run_in_the_same_directory_is_refused_before_any_work(reference: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in reference.rglob("*")}
    proc = _python(
        [
            "-c",
            "import sys, train; rc = train.main(sys.argv[1:]); "
            "print('heavy' if {'torch', 'lightning'} & set(sys.modules) else 'light'); "
            "sys.exit(rc)",
            *TINY,
            f"run.dir={reference}",
        ]
    )
    assert proc.returncode == 2 and proc.stdout.strip() == "light"
    assert "already holds a run" in proc.stderr and "run.overwrite=true" in proc.stderr
    assert {p: p.stat().st_mtime_ns for p in reference.rglob("*")} == before


@pytest.mark.slow
def test_overwrite_clears_the_directory_first(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    stale = run_dir / "checkpoints" / "stage1-best.ckpt"
    stale.write_text("an earlier run's checkpoint")
    (run_dir / "config.yaml").write_text("run: {seed: 5}\n")
    cfg = load_config([*TINY, f"run.dir={run_dir}"])
    with pytest.raises(ConfigError, match="already holds a run"):
        check_config(cfg)
    proc = _train(*_run_args(tmp_path, "run"), "run.overwrite=true", "stage1.epochs=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "stage1-best.ckpt",
        "stage1-last.ckpt",
    ]
    assert stale.read_bytes()[:2] == b"PK"  # a fresh torch checkpoint, not the old text
    assert OmegaConf.load(run_dir / "config.yaml").stage1.epochs == 1


# --- 3. re-evaluation keeps the record --------------------------------------------------------


@pytest.mark.slow
def test_reevaluation_goes_to_its_own_folder_and_never_rewrites_the_run(reference: Path) -> None:
    record = (reference / "results.json").read_bytes()
    overrides = ["eval.corruptions=[contrast]", "eval.severities=[5]"]
    proc = _python([str(REPO / "evaluate.py"), f"run={reference}", *overrides])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (reference / "results.json").read_bytes() == record
    out = reference / "evaluations" / evaluation_tag(overrides)
    again = _results(out)
    assert list(again["splits"]) == ["clean", "contrast/5"]
    assert again["run"]["evaluation_of"] == str(reference)
    original = json.loads(record)
    # Same weights, same images: the re-evaluated cells equal the run's own.
    assert again["splits"]["contrast/5"] == original["splits"]["contrast/5"]
    # Asking for the same evaluation again would replace a record: refused, record kept.
    proc = _python([str(REPO / "evaluate.py"), f"run={reference}", *overrides])
    assert proc.returncode == 2 and "tag=" in proc.stderr
    assert _results(out) == again


@pytest.mark.slow
def test_compare_still_pools_a_reevaluated_run(reference: Path, tmp_path: Path) -> None:
    from introspect.jobs.compare import compare

    proc = _python(
        [str(REPO / "evaluate.py"), f"run={reference}", "eval.severities=[5]", "tag=sev5"]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = compare([reference], tmp_path / "cmp", wandb=False)
    (group,) = report["groups"]
    assert group["runs"] == [str(reference)]
    # The benchmark number is still the run's own mean over its four training-time cells.
    summary = _results(reference)["summary"]
    assert len([s for s in _results(reference)["splits"] if "/" in s]) == 4
    for head, short in (("feedforward", "FF"), ("introspective", "INT"), ("control", "CTL")):
        mean, _ = group["table"][f"corrupted/{short}/acc"]
        assert mean == pytest.approx(summary[head]["acc"], abs=1e-12)


@pytest.mark.slow
def test_evaluate_tag_must_be_a_folder_name(reference: Path) -> None:
    proc = _python([str(REPO / "evaluate.py"), f"run={reference}", "tag=../x"])
    assert proc.returncode == 2 and "plain folder name" in proc.stderr


# --- 5. group choices on a finished run --------------------------------------------------------


@pytest.mark.slow
def test_evaluate_takes_group_choices_like_train(reference: Path) -> None:
    cfg = load_run_config(reference, ["trainer=ddp_cpu", "trainer.log_every_n_steps=3"])
    assert cfg.trainer.devices == 2 and cfg.trainer.strategy == "ddp"
    assert cfg.trainer.accelerator == "cpu" and cfg.trainer.log_every_n_steps == 3
    assert cfg.data.source == "synthetic"  # everything else is the run's own
    with pytest.raises(ConfigError, match="unknown trainer option 'dpp'"):
        load_run_config(reference, ["trainer=dpp"])
    with pytest.raises(ConfigError, match="data of a finished run is fixed"):
        load_run_config(reference, ["data=digits"])


@pytest.mark.slow
def test_reevaluation_on_two_processes_equals_one(reference: Path) -> None:
    proc = _python([str(REPO / "evaluate.py"), f"run={reference}", "trainer=ddp_cpu", "tag=ddp"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = _results(reference / "evaluations" / "ddp")
    one = _results(reference)
    assert two["run"]["provenance"]["processes"] == 2
    assert {k: v["num_samples"] for k, v in two["splits"].items()} == {
        k: v["num_samples"] for k, v in one["splits"].items()
    }
    for split, entry in one["splits"].items():
        for head in ("feedforward", "introspective", "control"):
            for metric in ("acc", "ece", "nll"):
                assert two["splits"][split][head][metric] == pytest.approx(
                    entry[head][metric], abs=1e-6
                )


# --- 6. values and paths checked first ---------------------------------------------------------


def _numeric_fields(cls: type, prefix: str = "") -> list[str]:
    """Dotted paths of every int/float field (also optional ones and lists of them)."""
    found: list[str] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            found += _numeric_fields(hint, f"{prefix}{f.name}.")  # type: ignore[arg-type]
            continue
        args = set(typing.get_args(hint)) | {hint}
        for arg in list(args):
            args |= set(typing.get_args(arg))
        if args & {int, float} and bool not in args:
            found.append(f"{prefix}{f.name}")
    return found


def test_every_numeric_field_has_a_range() -> None:
    fields = _numeric_fields(Config)
    assert "stage1.epochs" in fields and "stage2.head.hidden" in fields
    assert sorted(set(fields) - set(RANGES)) == []
    assert sorted(set(RANGES) - set(fields)) == []


@pytest.mark.parametrize(
    "path", sorted(p for p, r in RANGES.items() if (r.low, r.high) != (None, None))
)
def test_each_range_rejects_a_value_outside_it(path: str) -> None:
    valid = RANGES[path]
    if valid.low is not None:
        bad = valid.low if valid.low_open else valid.low - 1
    else:
        assert valid.high is not None
        bad = valid.high if valid.high_open else valid.high + 1
    if isinstance(OmegaConf.select(OmegaConf.structured(Config), path), int) and not isinstance(
        bad, int
    ):
        bad = int(bad)
    value = f"[{bad}]" if path in ("stage2.head.hidden", "eval.severities", "backbone.mean",
                                   "backbone.std") else str(bad)  # fmt: skip
    with pytest.raises(ConfigError, match=path.replace(".", r"\.")):
        load_config([f"{path}={value}"])


@pytest.mark.slow
def test_negative_epochs_stop_before_any_work(tmp_path: Path) -> None:
    proc = _train(*TINY, "stage1.epochs=-1", f"run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "config error: bad value -1 for 'stage1.epochs': must lie in [1, inf)"
    ]
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("script", "args", "message"),
    [
        ("train", ["run.dir=/proc/introspect-nope/run"], "cannot create run directory"),
        ("train", ["run.dir={file}"], "is a file"),
        ("evaluate", ["run={missing}"], "config.yaml not found"),
        ("evaluate", ["scores", "run={missing}"], "config.yaml not found"),
        ("evaluate", ["explain", "run={missing}"], "does not exist"),
        ("evaluate", ["compare", "{missing}"], "is not a run directory"),
    ],
)
def test_path_errors_come_before_heavy_imports(
    tmp_path: Path, script: str, args: list[str], message: str
) -> None:
    file = tmp_path / "a-file"
    file.write_text("")
    args = [a.format(file=file, missing=tmp_path / "nope") for a in args]
    code = (
        f"import sys, {script}; rc = {script}.main(sys.argv[1:]); "
        "print(sorted({'torch', 'lightning'} & set(sys.modules))); sys.exit(rc)"
    )
    proc = _python(["-c", code, *args])
    assert proc.returncode == 2
    assert proc.stdout.strip() == "[]"  # neither torch nor lightning was imported
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]


# --- resume, status, provenance ----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["stage1", "stage2", "evaluation"])
def test_a_killed_run_resumes_to_the_uninterrupted_results(
    reference: Path, tmp_path: Path, stage: str
) -> None:
    killer = tmp_path / "killer.py"
    killer.write_text(KILLER.format(repo=str(REPO)))
    args = _run_args(tmp_path, "run")
    run_dir = tmp_path / "run"
    killed = _python([str(killer), stage, *args])
    assert killed.returncode == 9, killed.stderr[-3000:]
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "running" and status["stage"] == stage
    assert not (run_dir / "results.json").exists()
    if stage == "evaluation":  # the first two groups were kept: clean and one corruption
        kept = sorted(p.name for p in (run_dir / ".partial-evaluation").iterdir())
        splits = ("clean", "gaussian_noise__1", "gaussian_noise__5")
        assert kept == sorted(f"{s}.{ext}" for s in splits for ext in ("json", "npz"))

    resumed = _train(*args, "run.resume=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    got, want = _results(run_dir), _results(reference)
    assert got["splits"] == want["splits"]
    assert got["summary"] == want["summary"]
    assert got["differences"] == want["differences"]
    got_images = read_predictions(run_dir / "predictions.npz")
    want_images = read_predictions(reference / "predictions.npz")
    assert got_images.keys() == want_images.keys()
    for split, arrays in want_images.items():
        assert got_images[split].keys() == arrays.keys()
        for key, want_array in arrays.items():
            np.testing.assert_array_equal(got_images[split][key], want_array)
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "complete" and len(status["resumes"]) == 1
    assert status["stages_done"] == ["stage1", "stage2", "evaluation"]
    assert not (run_dir / ".partial-evaluation").exists()


@pytest.mark.slow
def test_resume_refuses_a_changed_config_a_complete_run_and_an_empty_directory(
    reference: Path, tmp_path: Path
) -> None:

    from introspect.runs.status import update_status

    with pytest.raises(ConfigError, match="complete; nothing to resume"):
        check_config(load_config([*TINY, f"run.dir={reference}", "run.resume=true"]))
    unfinished = tmp_path / "unfinished"
    shutil.copytree(reference, unfinished)
    update_status(unfinished, state="running")
    with pytest.raises(ConfigError, match=r"config differs.*stage1\.epochs \(2 -> 3\)"):
        check_config(
            load_config([*TINY, "stage1.epochs=3", f"run.dir={unfinished}", "run.resume=true"])
        )
    # Where and how visibly it runs may change.
    check_config(load_config(
            [*TINY, f"run.dir={unfinished}", "run.resume=true", "stage2.cache_dir=/elsewhere",
             "trainer.enable_progress_bar=true"]
        ))  # fmt: skip
    with pytest.raises(ConfigError, match="holds no run"):
        check_run_dir(
            job_settings(load_config([*TINY, f"run.dir={tmp_path / 'x'}", "run.resume=true"])).run,
            job_settings(
                load_config([*TINY, f"run.dir={tmp_path / 'x'}", "run.resume=true"])
            ).config,
        )


@pytest.mark.slow
def test_a_run_made_before_a_schema_addition_resumes_while_it_stays_at_its_default(
    reference: Path, tmp_path: Path
) -> None:

    import yaml

    from introspect.runs.status import update_status

    older = tmp_path / "older"
    shutil.copytree(reference, older)
    update_status(older, state="running")
    saved = yaml.safe_load((older / "config.yaml").read_text())
    del saved["active"]  # a section the run's version of the schema did not have
    (older / "config.yaml").write_text(yaml.safe_dump(saved))
    check_config(load_config([*TINY, f"run.dir={older}", "run.resume=true"]))
    with pytest.raises(ConfigError, match=r"config differs.*active\.initial \(None -> 7\)"):
        check_config(
            load_config([*TINY, "active.initial=7", f"run.dir={older}", "run.resume=true"])
        )


def test_partial_evaluation_survives_a_schema_addition_at_its_default() -> None:
    from introspect.runs.rundir import config_digest

    cfg = load_config(TINY)
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(plain, dict)
    del plain["active"]  # as written by a version of the schema without that section
    digest = config_digest(job_settings(cfg).config)
    assert config_digest(plain) == digest  # type: ignore[arg-type]
    assert config_digest(job_settings(load_config([*TINY, "active.initial=7"])).config) != digest
    assert config_digest(job_settings(load_config([*TINY, "eval.severities=[2]"])).config) != digest


@pytest.mark.slow
def test_status_records_a_failure_and_compare_skips_unfinished_runs(
    reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from introspect.jobs.compare import compare

    killer = tmp_path / "killer.py"
    killer.write_text(KILLER.format(repo=str(REPO)))
    failed = _python([str(killer), "fail", *_run_args(tmp_path, "failed")])
    assert failed.returncode != 0 and "injected failure" in failed.stderr
    status = json.loads((tmp_path / "failed" / "status.json").read_text())
    assert status["state"] == "failed" and "RuntimeError: injected failure" in status["error"]
    assert status["stages_done"] == ["stage1"]
    # A run killed in evaluation but whose results.json a user copied in: still not complete.
    (tmp_path / "failed" / "results.json").write_bytes((reference / "results.json").read_bytes())
    report = compare([reference, tmp_path / "failed"], tmp_path / "cmp", wandb=False)
    assert report["skipped"] == [str(tmp_path / "failed")]
    assert [g["runs"] for g in report["groups"]] == [[str(reference)]]
    assert "skipping" in capsys.readouterr().err


@pytest.mark.slow
def test_results_record_their_provenance(reference: Path) -> None:
    import lightning
    import torch
    import torchmetrics
    import torchvision

    prov = _results(reference)["run"]["provenance"]
    versions = prov["versions"]
    assert versions["torch"] == torch.__version__
    assert versions["torchvision"] == torchvision.__version__
    assert versions["lightning"] == lightning.__version__
    assert versions["torchmetrics"] == torchmetrics.__version__
    assert versions["introspect"] is not None
    assert prov["device"]["device"] == "cpu" and prov["processes"] == 1
    assert "train.py" in prov["command"]
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    if head.returncode == 0:
        assert prov["git"]["commit"] == head.stdout.strip()
    else:
        assert prov["git"] is None
