"""Paired confidence intervals in the reports: predictions.npz of a run, the ``differences`` of
its results.json and verdict, the two-process evaluation, and compare's interval columns."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from introspect.jobs.compare import compare
from introspect.metrics.paired import paired_ece_differences, paired_mean_difference
from introspect.report.differences import read_predictions, write_predictions
from introspect.report.experiments import CompareError
from introspect.runs.integrity import (
    INTEGRITY,
    VERIFIED,
    check_record,
    file_sha256,
    write_sealed,
)
from tests.test_run_integrity import REPO, _python, _results, _run_args, _train

PAIRS = {
    "introspective-feedforward": ("introspective", "feedforward", "INT-FF"),
    "introspective-control": ("introspective", "control", "INT-CTL"),
    "introspective-control_hp": ("introspective", "control_hp", "INT-CTL(h,p)"),
    "introspective_ts-feedforward_ts": ("introspective_ts", "feedforward_ts", "INT+TS-FF+TS"),
    "introspective_ts-control_ts": ("introspective_ts", "control_ts", "INT+TS-CTL+TS"),
    "introspective_ts-control_hp_ts": (
        "introspective_ts",
        "control_hp_ts",
        "INT+TS-CTL(h,p)+TS",
    ),
}


@pytest.fixture(scope="module")
def seeds(finished_run: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two seeds of the tiny run (through train.py): same images, other weights. Seed 0 is a
    copy of the shared run (the default seed; tests write re-evaluations into it)."""
    tmp = tmp_path_factory.mktemp("paired")
    runs = [Path(shutil.copytree(finished_run, tmp / "s0"))]
    proc = _train(*_run_args(tmp, "s1"), "run.seed=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [*runs, tmp / "s1"]


def _load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def _scope_arrays(arrays: dict[str, np.ndarray], splits: list[str], scope: str, head: str):
    """(correct, strata) of ``head`` (or a key like ``<head>.confidence``) in ``scope``, built
    from the file's keys directly."""
    if scope == "clean":
        return arrays[f"clean/{head}"], None
    cells = sorted(s for s in splits if "/" in s)
    correct = np.concatenate([arrays[f"{c}/{head}"] for c in cells])
    strata = np.concatenate([np.full(len(arrays[f"{c}/labels"]), c) for c in cells])
    return correct, strata


@pytest.mark.slow
def test_predictions_give_the_accuracy_of_every_split_and_head(seeds: list[Path]) -> None:
    for run in seeds:
        results = _results(run)
        arrays = _load(run / "predictions.npz")
        heads = [h for h in results["splits"]["clean"] if h != "num_samples"]
        assert {"feedforward", "introspective_ts", "control_ts", "control_hp_ts"} <= set(heads)
        keys = [*heads, *(f"{h}.confidence" for h in heads), "labels"]
        expected = {f"{s}/{k}" for s in results["splits"] for k in keys}
        assert set(arrays) == expected
        for split, entry in results["splits"].items():
            n = entry["num_samples"]
            assert arrays[f"{split}/labels"].shape == (n,)
            for head in heads:
                correct = arrays[f"{split}/{head}"]
                assert correct.dtype == np.uint8 and correct.shape == (n,)
                assert set(np.unique(correct)) <= {0, 1}
                # Exact: the count of right images is the one torchmetrics counted.
                assert int(correct.sum()) == round(entry[head]["acc"] * n)
                assert correct.mean() == pytest.approx(entry[head]["acc"], abs=1e-7)
                confidence = arrays[f"{split}/{head}.confidence"]
                assert confidence.dtype == np.float32 and confidence.shape == (n,)
        # The record seals the file beside it.
        seal = results[INTEGRITY]["beside"]
        assert seal == {"predictions.npz": file_sha256(run / "predictions.npz")}


def test_differences_are_the_paired_bootstrap_of_the_predictions_file(seeds: list[Path]) -> None:
    run = seeds[0]
    results = _results(run)
    arrays = _load(run / "predictions.npz")
    diffs = results["differences"]
    assert (diffs["resamples"], diffs["level"], diffs["seed"]) == (10_000, 0.95, 0)
    splits = list(results["splits"])
    table = (run / "table.md").read_text()
    for scope in ("clean", "corrupted"):
        assert set(diffs[scope]) == set(PAIRS)
        for key, (head, base, _) in PAIRS.items():
            a, strata = _scope_arrays(arrays, splits, scope, head)
            b, _ = _scope_arrays(arrays, splits, scope, base)
            want = paired_mean_difference(a, b, strata=strata, resamples=10_000, level=0.95, seed=0)
            got = diffs[scope][key]["acc"]
            assert got == {
                "estimate": want.estimate,
                "low": want.low,
                "high": want.high,
                "verdict": want.verdict,
            }
            # The estimate is the difference of the record's accuracies (equal-sized cells).
            entry = results["splits"]["clean"] if scope == "clean" else results["summary"]
            assert got["estimate"] == pytest.approx(
                entry[head]["acc"] - entry[base]["acc"], abs=1e-9
            )
            # ECE: both heads' ECEs recomputed on every resample of the file's images.
            conf = {
                h: _scope_arrays(arrays, splits, scope, f"{h}.confidence")[0] for h in (head, base)
            }
            hits = {h: _scope_arrays(arrays, splits, scope, h)[0] for h in (head, base)}
            ece = paired_ece_differences(conf, hits, [(head, base)], strata=strata)[(head, base)]
            assert diffs[scope][key]["ece"] == {
                "estimate": ece.estimate,
                "low": ece.low,
                "high": ece.high,
                "verdict": ece.verdict,
            }
            # The estimate is the difference of the record's ECEs (the mean over the cells).
            assert ece.estimate == pytest.approx(entry[head]["ece"] - entry[base]["ece"], abs=1e-6)
            interval = f"[{100 * want.low:+.2f}, {100 * want.high:+.2f}] ({want.verdict})"
            name = f"{head} vs {base}".replace("_ts", "+TS")
            prefix = "clean" if scope == "clean" else "corrupted (mean of cells)"
            assert any(
                line.startswith(f"{prefix}: {name}: accuracy ") and interval in line
                for line in table.splitlines()
            ), (name, interval)


@pytest.mark.slow
def test_two_processes_keep_the_images_and_heads_paired(seeds: list[Path]) -> None:
    run = seeds[0]
    proc = _python([str(REPO / "evaluate.py"), f"run={run}", "trainer=ddp_cpu", "tag=ddp"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = run / "evaluations" / "ddp"
    assert _results(out)["run"]["provenance"]["processes"] == 2
    one, two = _load(run / "predictions.npz"), _load(out / "predictions.npz")
    assert one.keys() == two.keys()
    for key, array in one.items():
        np.testing.assert_array_equal(two[key], array, err_msg=key)
    assert _results(out)["differences"] == _results(run)["differences"]
    # The re-evaluation's record seals its own predictions file.
    assert check_record(out / "results.json", run) == VERIFIED
    assert _results(out)[INTEGRITY]["beside"] == {
        "predictions.npz": file_sha256(out / "predictions.npz")
    }


def test_compare_adds_the_hierarchical_interval_of_every_difference(
    seeds: list[Path], tmp_path: Path
) -> None:
    report = compare(seeds, tmp_path / "out")
    (group,) = report["groups"]
    stacked = [_load(run / "predictions.npz") for run in seeds]
    splits = list(_results(seeds[0])["splits"])
    with (tmp_path / "out" / "comparison.csv").open() as fh:
        (row,) = list(csv.DictReader(fh))
    for scope in ("clean", "corrupted"):
        for head, base, short in PAIRS.values():
            a = np.stack([_scope_arrays(s, splits, scope, head)[0] for s in stacked])
            b = np.stack([_scope_arrays(s, splits, scope, base)[0] for s in stacked])
            strata = _scope_arrays(stacked[0], splits, scope, head)[1]
            want = paired_mean_difference(a, b, strata=strata)
            key = f"{scope}/{short}/acc"
            got = group["intervals"][key]
            assert (got["estimate"], got["low"], got["high"]) == (
                want.estimate,
                want.low,
                want.high,
            )
            # The point estimate is the mean of the per-seed differences of the table.
            assert group["table"][key][0] == pytest.approx(want.estimate, abs=1e-9)
            text = f"{want.format()} {want.verdict}"
            assert row[f"{key}_ci"] == text
            assert float(row[f"{key}_ci_low"]) == pytest.approx(want.low, abs=1e-6)
            assert f"| {text} |" in report["markdown"]
            assert f"{key}_mean" in row  # the existing columns stay
    assert "INT−FF acc 95 % CI" in report["markdown"]
    assert "INT−CTL(h,p) ECE 95 % CI" in report["markdown"]
    for scope in ("clean", "corrupted"):
        got = group["intervals"][f"{scope}/INT-CTL(h,p)/ece"]
        assert got["low"] <= got["estimate"] <= got["high"]
        assert group["table"][f"{scope}/INT-CTL(h,p)/ece"][0] == pytest.approx(
            got["estimate"], abs=1e-6
        )


def _copy(run: Path, tmp_path: Path, name: str) -> Path:
    copy = tmp_path / name
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("evaluations", "cmp"))
    return copy


def test_compare_refuses_a_tampered_predictions_file(seeds: list[Path], tmp_path: Path) -> None:
    run = _copy(seeds[0], tmp_path, "run")
    images = read_predictions(run / "predictions.npz")
    flipped = images["clean"]["introspective"].copy()
    flipped[0] = 1 - flipped[0]
    images["clean"]["introspective"] = flipped
    write_predictions(run / "predictions.npz", images)
    with pytest.raises(CompareError, match="predictions.npz beside it changed since"):
        compare([run], tmp_path / "out")
    report = compare([run], tmp_path / "out", allow_modified=True)
    assert report["groups"][0]["label"].endswith("(modified)")


def test_older_records_without_predictions_compare_with_a_dash(
    seeds: list[Path], tmp_path: Path
) -> None:
    old = _copy(seeds[1], tmp_path, "old")
    (old / "predictions.npz").unlink()
    record = _results(old)
    for key in (INTEGRITY, "differences"):
        del record[key]
    write_sealed(old / "results.json", record, old)  # sealed, as before predictions existed
    report = compare([seeds[0], old], tmp_path / "out")
    (group,) = report["groups"]
    assert group["intervals"] == {}
    assert "clean/INT-FF/acc" in group["table"]  # the per-seed differences are still there
    lines = report["markdown"].splitlines()
    header = next(line for line in lines if "INT−FF acc 95 % CI" in line)
    row = lines[lines.index(header) + 2]
    assert row.endswith("| — | — | — | — |")
    (note,) = [line for line in lines if "predictions.npz" in line]
    assert str(old) in note and str(seeds[0]) not in note
    with (tmp_path / "out" / "comparison.csv").open() as fh:
        (row_csv,) = list(csv.DictReader(fh))
    assert row_csv["clean/INT-FF/acc_ci"] == "—" and row_csv["clean/INT-FF/acc_ci_low"] == ""


def test_a_record_sealing_a_foreign_file_is_refused(seeds: list[Path], tmp_path: Path) -> None:
    run = _copy(seeds[0], tmp_path, "run")
    record = json.loads((run / "results.json").read_text())
    record[INTEGRITY]["beside"]["../config.yaml"] = file_sha256(run / "config.yaml")
    (run / "results.json").write_text(json.dumps(record))
    with pytest.raises(CompareError, match="not a file a record seals beside it"):
        compare([run], tmp_path / "out")
