"""Command-line conventions: help/discovery, --cfg, python -m introspect, multirun sweeps (local
and the SLURM submission), and the quiet console (banners once, progress lines every ~10 %)."""

from __future__ import annotations

import io
import itertools
import json
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, TensorDataset

from introspect.config import load_config
from introspect.config.discovery import first_line
from introspect.jobs.settings import train_settings
from introspect.jobs.sweep import SweepError, expand, plan_sweep, split_values
from introspect.runs.trainer import LineProgress, build_trainer

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"

TINY = [
    "data=synthetic",
    "data.num_samples=120",
    "data.image_size=8",
    "stage1.epochs=1",
    "stage2.head.epochs=1",
    "stage2.head.hidden=[16]",
    "eval.corruptions=[contrast]",
    "eval.severities=[5]",
]


def _python(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, **kwargs
    )


# -- discovery ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_train_help_lists_groups_experiments_and_sections() -> None:
    proc = _python(["train.py", "--help"])
    assert proc.returncode == 0
    out = proc.stdout
    for group in ("data", "backbone", "trainer", "logger"):
        for path in (CONFIGS / group).glob("*.yaml"):
            assert path.stem in out, f"{group} option {path.stem} missing from --help"
    for path in (CONFIGS / "experiment").glob("*.yaml"):
        line = next(ln for ln in out.splitlines() if ln.strip().startswith(path.stem + " "))
        described = first_line(path)
        assert described, f"{path} has no leading comment"
        assert line.split(None, 1)[1].rstrip("…")[:30] == described[:30]
    for section in ("run", "data", "backbone", "stage1", "stage2", "eval", "trainer", "logger"):
        assert f"\n  {section} " in out
    assert "digits*" in out  # the root default is marked
    assert "slurm" in out and "-m" in out


def test_first_line_keeps_abbreviations_whole(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("# A ResNet (He et al. 2016, e.g. CIFAR). Second sentence.\n# more\nkey: 1\n")
    assert first_line(path) == "A ResNet (He et al. 2016, e.g. CIFAR)."


@pytest.mark.slow
def test_cfg_prints_the_composed_config_and_runs_nothing(tmp_path: Path) -> None:
    args = [*TINY, f"run.root={tmp_path}", "stage2.head.epochs=7"]
    proc = _python(["train.py", "--cfg", *args])
    assert proc.returncode == 0, proc.stderr
    printed = yaml.safe_load(proc.stdout)
    expected = OmegaConf.to_container(load_config(args), resolve=True)
    assert printed == expected
    assert printed["stage2"]["head"]["epochs"] == 7
    assert list(tmp_path.iterdir()) == []  # no run directory


@pytest.mark.slow
def test_cfg_reports_a_bad_key_in_one_line() -> None:
    proc = _python(["train.py", "--cfg", "stage2.hed.epochs=3"])
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Did you mean 'head'" in proc.stderr


@pytest.mark.slow
def test_python_m_introspect_dispatches_to_both_commands() -> None:
    listing = _python(["-m", "introspect"])
    assert listing.returncode == 2
    for command in ("train", "evaluate", "compare", "scores", "explain"):
        assert f"  {command} " in listing.stdout
    train_help = _python(["-m", "introspect", "train", "--help"])
    assert train_help.returncode == 0 and "Experiments" in train_help.stdout
    compare = _python(["-m", "introspect", "compare", "/nonexistent/run"])
    assert compare.returncode == 2 and "is not a run directory" in compare.stderr
    evaluate_help = _python(["-m", "introspect", "evaluate", "--help"])
    for sub in ("compare", "scores", "explain", "explain-eval", "explain-network"):
        assert f"evaluate.py {sub}" in evaluate_help.stdout
    assert _python(["-m", "introspect", "trian"]).returncode == 2


def test_python_m_introspect_lists_and_refuses_in_process(capsys) -> None:
    """The fast subset's check of ``introspect.__main__`` (the subprocess test runs it too)."""
    from introspect.__main__ import COMMANDS, main

    assert main([]) == 2 and main(["--help"]) == 0
    listing = capsys.readouterr().out
    assert all(f"  {command} " in listing for command in COMMANDS)
    assert main(["trian"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: unknown command 'trian'")


def test_console_scripts_are_declared() -> None:
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["introspect-train"] == "introspect.cli.train:entry"
    assert scripts["introspect-evaluate"] == "introspect.cli.evaluate:entry"
    from introspect.cli import evaluate, train

    assert callable(train.entry) and callable(evaluate.entry)


# -- sweep grammar ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0,1,2", ["0", "1", "2"]),
        ("range(0,3)", ["0", "1", "2"]),
        ("range(1, 7, 3)", ["1", "4"]),
        ("[1,5]", ["[1,5]"]),
        ("[1,5],[2]", ["[1,5]", "[2]"]),
        ("'a,b',c", ["'a,b'", "c"]),
        ("{x: 1, y: 2}", ["{x: 1, y: 2}"]),
        ("augmix", ["augmix"]),
    ],
)
def test_split_values(value: str, expected: list[str]) -> None:
    assert split_values(value) == expected


def test_expand_is_the_cartesian_product_in_order() -> None:
    combos = expand(["run.seed=0,1,2", "data=digits", "stage2.augment=none,augmix"])
    reference = [
        ["data=digits", f"run.seed={s}", f"stage2.augment={a}"]
        for s, a in itertools.product("012", ["none", "augmix"])
    ]
    assert [c[0] for c in combos] == reference
    assert combos[1][1] == ["run.seed=0", "stage2.augment=augmix"]
    with pytest.raises(SweepError, match="empty value"):
        expand(["run.seed=0,,1"])


@pytest.mark.slow
def test_a_bad_combination_stops_the_sweep_before_any_job(tmp_path: Path) -> None:
    with pytest.raises(SweepError, match=r"job 1 .*stage2.augment=augmx.*Did you mean 'augmix'"):
        plan_sweep(["stage2.augment=none,augmx", f"sweep.dir={tmp_path / 's'}"], CONFIGS)
    with pytest.raises(SweepError, match="sweep.dir"):
        plan_sweep(["run.seed=0,1", "run.dir=/tmp/x"], CONFIGS)
    with pytest.raises(Exception, match="unknown launcher option 'slurn'.*slurm"):
        plan_sweep(["run.seed=0,1", "launcher=slurn"], CONFIGS)
    with pytest.raises(Exception, match="launcher.mem_gb"):
        plan_sweep(["run.seed=0,1", "launcher=slurm", "launcher.mem_gb=0"], CONFIGS)
    assert not (tmp_path / "s").exists()


@pytest.mark.slow
def test_jobs_get_their_own_directories_under_the_sweep(tmp_path: Path) -> None:
    sweep = plan_sweep(
        ["run.seed=0,1", "stage2.augment=none,augmix", f"sweep.dir={tmp_path}"], CONFIGS
    )
    dirs = [j.run_dir for j in sweep.jobs]
    assert len(dirs) == 4 and len(set(dirs)) == 4
    assert all(d.parent == tmp_path.resolve() for d in dirs)
    assert dirs[3].name == "003_seed=1_augment=augmix"


# -- local sweep end to end -------------------------------------------------------------------


@pytest.mark.slow
def test_local_multirun_runs_every_job_and_compares_them(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    proc = _python(
        [
            "train.py",
            "-m",
            *TINY,
            f"stage2.cache_dir={tmp_path / 'cache'}",
            "run.seed=0,1",
            f"sweep.dir={sweep_dir}",
        ],
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.rstrip().splitlines()[-1] == f"sweep directory: {sweep_dir.resolve()}"
    manifest = json.loads((sweep_dir / "sweep.json").read_text())
    assert [j["state"] for j in manifest["jobs"]] == ["complete", "complete"]
    seeds = []
    for job in manifest["jobs"]:
        run_dir = Path(job["run_dir"])
        assert run_dir.parent == sweep_dir.resolve()
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        seeds.append(config["run"]["seed"])
        assert (run_dir / "results.json").is_file()
    assert seeds == [0, 1]
    table = (sweep_dir / "comparison.md").read_text()
    assert "±" in table  # the two seeds pooled into mean ± std
    assert (sweep_dir / "comparison.csv").is_file()
    # A quiet console: a handful of lines per job without a terminal, no repeated banners.
    assert proc.stderr.count("GPU available") <= 2  # once per job process
    # (the tables are printed in blocks that fit 100 columns, hence more, shorter lines)
    assert len((proc.stdout + proc.stderr).splitlines()) < 2 * 230  # ~208 a job with CTL(h,p)


# -- SLURM: the generated submission ----------------------------------------------------------


@pytest.mark.slow
def test_slurm_launcher_submits_one_job_array(tmp_path: Path) -> None:
    pytest.importorskip("submitit")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    captured = tmp_path / "captured.sh"
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(f'#!/bin/sh\ncp "$1" {captured}\necho "Submitted batch job 4242"\n')
    sbatch.chmod(sbatch.stat().st_mode | stat.S_IEXEC)
    srun = bin_dir / "srun"  # submitit checks that it is on a cluster
    srun.write_text("#!/bin/sh\nexit 1\n")
    srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
    sweep_dir = tmp_path / "sweep"
    env_path = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "introspect",
            "train",
            "-m",
            *TINY,
            "run.seed=0,1,2",
            "launcher=slurm",
            "launcher.partition=dev",
            "launcher.wait=false",
            "launcher.mem_gb=8",
            "launcher.array_parallelism=2",
            "launcher.setup=[module load cuda]",
            f"sweep.dir={sweep_dir}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PATH": env_path, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    script = captured.read_text()
    assert "#SBATCH --partition=dev" in script
    assert "#SBATCH --array=0-2%2" in script
    assert "#SBATCH --mem=8GB" in script
    assert "#SBATCH --cpus-per-task=2" in script
    assert "module load cuda" in script
    assert "submitit.core._submit" in script
    manifest = json.loads((sweep_dir / "sweep.json").read_text())
    states = [j["state"] for j in manifest["jobs"]]
    assert states == [f"submitted (slurm job 4242_{i})" for i in range(3)]
    assert not any(Path(j["run_dir"]).exists() for j in manifest["jobs"])  # nothing ran here


# -- quiet console ----------------------------------------------------------------------------


class _Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 2)

    def training_step(self, batch, _):
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self.layer(x), y)
        self.log("loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, _):
        return None

    def test_step(self, batch, _, dataloader_idx=0):
        return None

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader(n: int) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(n, 4, generator=g), torch.arange(n) % 2), 1)


def test_line_progress_prints_one_line_per_tenth_of_each_stage(tmp_path: Path) -> None:
    stream = io.StringIO()
    trainer = L.Trainer(
        max_epochs=20,
        callbacks=[LineProgress(stream)],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    model = _Tiny()
    trainer.fit(model, _loader(3), _loader(2))  # validation inside fit adds no lines
    fit_lines = stream.getvalue().splitlines()
    assert [ln.split("  ")[0] for ln in fit_lines] == [
        f"fit epochs: {e}/20 ({5 * e} %)" for e in range(2, 21, 2)
    ]
    assert "loss=" in fit_lines[-1]
    stream.truncate(0)
    stream.seek(0)
    trainer.test(model, [_loader(7), _loader(8)], verbose=False)  # 15 batches over two loaders
    test_lines = stream.getvalue().splitlines()
    assert len(test_lines) == 10 and test_lines[-1] == "test batches: 15/15 (100 %)"
    stream.truncate(0)
    stream.seek(0)
    trainer.validate(model, _loader(4), verbose=False)
    assert stream.getvalue().splitlines() == [
        f"validate batches: {i}/4 ({25 * i} %)" for i in (1, 2, 3, 4)
    ]


def test_lightning_banners_appear_once_per_process(tmp_path: Path) -> None:
    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler = Collect()
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    logger.addHandler(handler)
    try:
        cfg = load_config(["trainer.enable_progress_bar=false"])
        for _ in range(3):
            build_trainer(train_settings(cfg).job.trainer, tmp_path)
    finally:
        logger.removeHandler(handler)
    banners = [m for m in seen if m.startswith("GPU available")]
    assert len(banners) <= 1
