"""The bookkeeping every job shares (``jobs.job``), the dispatch of ``run`` (``jobs.train``), how
commands end on errors (``jobs.errors``) and the one loader of a finished run
(``runs.finished``)."""

from __future__ import annotations

import errno
import json
import time
from pathlib import Path

import pytest

from introspect.config import load_config
from introspect.jobs.errors import exit_code
from introspect.jobs.job import Job, job_settings, run_job
from introspect.runs.errors import PipelineError
from introspect.runs.finished import FinishedRunError, open_finished_run
from introspect.runs.integrity import MODIFIED, UNVERIFIED, VERIFIED, write_sealed
from introspect.runs.provenance import results_header
from introspect.runs.status import read_status, update_status


def _cfg(tmp_path: Path, *extra: str):
    return load_config(["data=synthetic", f"run.dir={tmp_path / 'run'}", *extra])


def test_a_stage_is_under_way_in_its_block_and_done_with_its_seconds_after(
    tmp_path: Path,
) -> None:
    update_status(tmp_path, state="running")
    job = Job(tmp_path)
    with job.stage("stage1"):
        assert read_status(tmp_path)["stage"] == "stage1"
        assert "stages_done" not in read_status(tmp_path)
        clock = time.perf_counter()
        time.sleep(0.05)
        slept = time.perf_counter() - clock
    status = read_status(tmp_path)
    assert status["stages_done"] == ["stage1"]
    assert slept - 0.001 <= status["stage_seconds"]["stage1"] < slept + 1.0  # rounded to ms
    assert job.stage_seconds == status["stage_seconds"]


def test_a_failing_stage_is_not_marked_done(tmp_path: Path) -> None:
    update_status(tmp_path, state="running")
    job = Job(tmp_path)
    with pytest.raises(ValueError), job.stage("stage2"):
        raise ValueError("boom")
    assert "stages_done" not in read_status(tmp_path) and job.stage_seconds == {}


def test_a_job_that_does_not_write_leaves_no_status(tmp_path: Path) -> None:
    with Job(tmp_path, write=False).stage("stage1"):
        pass
    assert read_status(tmp_path) is None


def test_run_job_marks_the_run_complete_with_every_stage(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    with run_job(job_settings(cfg), loggers=False) as job:
        assert read_status(job.run_dir)["state"] == "running"
        for stage in ("stage1", "stage2", "evaluation"):
            with job.stage(stage):
                pass
    status = read_status(tmp_path / "run")
    assert status["state"] == "complete" and status["stage"] is None
    assert status["stages_done"] == ["stage1", "stage2", "evaluation"]
    assert set(status["stage_seconds"]) == {"stage1", "stage2", "evaluation"}
    # The whole run lasts at least as long as its stages together (the printed total is this).
    assert status["seconds"] >= sum(status["stage_seconds"].values())
    assert (tmp_path / "run" / "config.yaml").is_file()


@pytest.mark.parametrize(
    ("error", "state", "message"),
    [
        (ValueError("bad\nvalue"), "failed", "ValueError: bad value"),
        (KeyboardInterrupt(), "interrupted", "interrupted (SIGINT)"),
    ],
)
def test_run_job_records_how_the_run_ended(
    tmp_path: Path, error: BaseException, state: str, message: str
) -> None:
    with pytest.raises(type(error)), run_job(job_settings(_cfg(tmp_path)), loggers=False) as job:
        with job.stage("stage1"):
            pass
        raise error
    status = read_status(tmp_path / "run")
    assert status["state"] == state and status["error"] == message
    assert status["stages_done"] == ["stage1"] and "failed" in status


def test_a_full_disk_becomes_one_error_saying_how_to_continue(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / "x.pt"))
    with pytest.raises(PipelineError) as caught, run_job(job_settings(cfg), loggers=False):
        raise full
    assert str(tmp_path / "run" / "x.pt") in str(caught.value)
    assert f"run.resume=true run.dir={tmp_path / 'run'}" in str(caught.value)
    status = read_status(tmp_path / "run")
    assert status["state"] == "failed" and status["error"].startswith("ENOSPC")


@pytest.mark.parametrize(
    ("overrides", "kind"),
    [([], "two-stage"), (["active.enabled=true"], "active"), (["task=quality"], "quality")],
)
def test_run_dispatches_through_the_jobs_table(
    tmp_path: Path, overrides: list[str], kind: str
) -> None:
    from introspect.jobs import active, quality, train
    from introspect.jobs.settings import train_settings

    cfg = _cfg(tmp_path, *overrides)
    assert train_settings(cfg).kind == kind
    expected = {"active": active.run_active, "quality": quality.run_quality}
    if kind == "two-stage":  # run hands the two-stage job its settings, not the config
        assert kind not in train.JOBS
    else:
        assert train.JOBS[kind][1] is expected[kind]


def test_exit_codes_and_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_code(PipelineError("fix it"), out=tmp_path, again="again") == 2
    assert capsys.readouterr().err == "error: fix it\n"
    full = OSError(errno.ENOSPC, "full", str(tmp_path / "f"))
    assert exit_code(full, out=tmp_path, again="free space and retry") == 2
    assert capsys.readouterr().err == (
        f"error: no space left on device while writing {tmp_path / 'f'}; free space and retry\n"
    )
    stop = "interrupted: stopped"
    assert exit_code(KeyboardInterrupt(), out=tmp_path, again="", interrupted_line=stop) == 130
    assert capsys.readouterr().err == stop + "\n"
    assert exit_code(KeyboardInterrupt(), out=tmp_path, again="") is None
    assert exit_code(RuntimeError("a bug"), out=tmp_path, again="") is None
    assert capsys.readouterr().err == ""


def test_results_header_holds_name_config_provenance_and_seconds() -> None:
    started = time.perf_counter() - 2.0
    header = results_header("x", {"a": 1}, seed=3, started=started, evaluation_of="/r")
    assert list(header) == [
        "name",
        "created",
        "seed",
        "config",
        "provenance",
        "evaluation_of",
        "seconds",
    ]
    assert header["config"] == {"a": 1} and header["seed"] == 3 and header["evaluation_of"] == "/r"
    assert 2.0 <= header["seconds"] < 60.0
    assert header["provenance"]["processes"] == 1
    assert "seed" not in results_header("x", {})


def _finished(path: Path, **run: object) -> Path:
    path.mkdir(parents=True)
    record = {"run": {"config": {"run": {"seed": 4}}, **run}, "splits": {"clean": {}}}
    write_sealed(path / "results.json", record, path)
    update_status(path, state="complete")
    return path


def test_open_finished_run_reads_and_verifies_the_record(tmp_path: Path) -> None:
    run = open_finished_run(_finished(tmp_path / "a"))
    assert run.path == (tmp_path / "a").resolve() and run.seed == 4
    assert run.record == VERIFIED and run.note is None
    assert run.results["splits"] == {"clean": {}}


def test_open_finished_run_refuses_what_is_no_finished_run(tmp_path: Path) -> None:
    unfinished = _finished(tmp_path / "unfinished")
    update_status(unfinished, state="running")
    with pytest.raises(FinishedRunError, match="not complete"):
        open_finished_run(unfinished)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FinishedRunError, match="has no results.json"):
        open_finished_run(tmp_path / "empty")
    with pytest.raises(FinishedRunError, match="has no active.json"):
        open_finished_run(_finished(tmp_path / "two-stage"), record_file="active.json")
    with pytest.raises(FinishedRunError, match="curves"):
        open_finished_run(tmp_path / "two-stage", required=("curves",))


def test_open_finished_run_never_resolves_an_interpolation(tmp_path: Path) -> None:
    path = tmp_path / "interp"
    path.mkdir()
    record = {"run": {"config": {"run": {"name": "${oc.env:HOME}"}}}, "splits": {}}
    (path / "results.json").write_text(json.dumps(record))
    with pytest.raises(FinishedRunError, match=r"run\.config\.run\.name holds an interpolation"):
        open_finished_run(path)


def test_an_edited_record_is_refused_unless_allowed_and_then_marked(tmp_path: Path) -> None:
    path = _finished(tmp_path / "edited")
    record = json.loads((path / "results.json").read_text())
    record["splits"]["clean"] = {"acc": 1.0}
    (path / "results.json").write_text(json.dumps(record))
    with pytest.raises(FinishedRunError, match="--allow-modified"):
        open_finished_run(path)
    run = open_finished_run(path, allow_modified=True)
    assert run.record == MODIFIED and "does not match its integrity digest" in run.note
    del record["integrity"]
    (path / "results.json").write_text(json.dumps(record))
    assert open_finished_run(path).record == UNVERIFIED
