"""Resuming a killed active-learning run: it continues from the last finished round of every
curve (nothing finished is trained again) and ends with the same acquisitions, curves and table
as the same run left uninterrupted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from introspect.config import load_config

# Digits, 10 labelled at round 0 and 8 more in each of 2 rounds; warm starts, so the restored
# weights are both what scores the pool and where the next round's training starts.
TINY = [
    "experiment=active_digits",
    "active.initial=10",
    "active.per_round=8",
    "active.rounds=2",
    "active.strategies=[random,margin]",
    "active.warm_start=true",
    "active.batch_size=200",
    "stage1.epochs=1",
    "stage2.head.epochs=1",
    "stage2.head.hidden=[16]",
    "logger.wandb=false",
]
KILLED_AT = "margin/feedforward/round2"


class Killed(RuntimeError):
    pass


def run_settings(cfg):
    """The active job of the configuration ``cfg``."""
    from introspect.jobs.active import ActiveSettings, run_active

    return run_active(ActiveSettings.from_config(cfg))


@pytest.mark.slow
def test_a_killed_active_run_resumes_to_the_uninterrupted_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, single_thread
) -> None:
    from introspect.jobs import active as active_run

    whole = run_settings(load_config([*TINY, f"run.dir={tmp_path / 'whole'}"]))

    fit = active_run.RunLearner.fit
    fitted: list[str] = []
    kills = [1]

    def killing(self, pool, previous, tag):
        if tag == KILLED_AT and kills:
            kills.pop()
            raise Killed("simulated kill")
        fitted.append(tag)
        return fit(self, pool, previous, tag)

    monkeypatch.setattr(active_run.RunLearner, "fit", killing)
    run_dir = tmp_path / "killed"
    with pytest.raises(Killed):
        run_settings(load_config([*TINY, f"run.dir={run_dir}"]))
    assert not (run_dir / "active.json").exists()
    assert json.loads((run_dir / "status.json").read_text())["state"] == "failed"
    assert sorted(p.name for p in (run_dir / "active_rounds").iterdir()) == [
        "margin-feedforward.pt",
        "random-any.pt",
        "round0.pt",
    ]
    assert fitted == [
        "round0",
        "random/any/round1",
        "random/any/round2",
        "margin/feedforward/round1",
    ]

    fitted.clear()
    resumed = run_settings(load_config([*TINY, f"run.dir={run_dir}", "run.resume=true"]))
    # Only the rounds that had not finished are trained.
    assert fitted == [
        "margin/feedforward/round2",
        "margin/introspective/round1",
        "margin/introspective/round2",
    ]
    assert resumed["run"]["restored"] == ["round0", "random/any", "margin/feedforward"]
    assert resumed["curves"] == whole["curves"]
    assert resumed["table"] == whole["table"]
    on_disk = json.loads((run_dir / "active.json").read_text())
    assert on_disk["curves"] == json.loads(json.dumps(whole["curves"]))
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "complete" and len(status["resumes"]) == 1
    # The resumed part logs beside the killed one instead of replacing its metrics.csv.
    assert (run_dir / "logs" / "resume-1" / "metrics.csv").is_file()


@pytest.mark.slow
def test_resume_refuses_a_changed_schedule(tmp_path: Path, monkeypatch, single_thread) -> None:
    from introspect.config import ConfigError
    from introspect.jobs import active as active_run

    def killing(self, pool, previous, tag):
        raise Killed("simulated kill")

    monkeypatch.setattr(active_run.RunLearner, "fit", killing)
    run_dir = tmp_path / "run"
    with pytest.raises(Killed):
        run_settings(load_config([*TINY, f"run.dir={run_dir}"]))
    with pytest.raises(ConfigError, match=r"config differs.*active\.per_round \(8 -> 9\)"):
        run_settings(
            load_config([*TINY, "active.per_round=9", f"run.dir={run_dir}", "run.resume=true"])
        )
