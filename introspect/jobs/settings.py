"""The values the training job and its stages take, built from a validated configuration in
one place (``train_settings``; every job's bookkeeping: ``jobs.job.job_settings``). Nothing
below the command layer sees the configuration."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from introspect.config.schema import (
    Config,
    DataConfig,
    EvalConfig,
    Stage2Config,
    TrainerConfig,
)
from introspect.jobs.job import JobSettings, job_settings
from introspect.runs.errors import PipelineError
from introspect.runs.options import RunOptions
from introspect.runs.rundir import config_digest
from introspect.runs.trainer import resolve_device
from introspect.stages.baselines import CalibrationPlan, trained_here
from introspect.stages.evaluate import ReportOptions
from introspect.stages.options import (
    FeatureOptions,
    HeadRecipe,
    Stage1Options,
    Stage2Settings,
    TrainingData,
)
from introspect.stages.stage1 import stage1_checkpoint
from introspect.uncertainty import MCDropout

# Data fields that change which images a split holds (not how they are batched or loaded).
_DATA_IDENTITY = (
    "source", "path", "test_path", "val_fraction", "test_fraction", "split_seed", "image_size",
    "num_classes", "num_samples",
)  # fmt: skip


@dataclass(frozen=True)
class TrainSettings:
    """Everything the training job and its stages take: the job's bookkeeping, which job
    (``kind``: ``two-stage``, ``active`` or ``quality``), stage 1, stage 2 (``stage2_enabled``),
    the evaluation section, what the report records and the MC-dropout baseline."""

    job: JobSettings
    kind: str
    stage1: Stage1Options
    stage2: Stage2Settings
    stage2_enabled: bool
    eval: EvalConfig
    report: ReportOptions
    mc_dropout: MCDropout | None
    calibration_split: str
    device: str

    def placed(self, job: JobSettings) -> TrainSettings:
        """These settings for the run as placed: ``job`` (see ``JobSettings.placed``), its name,
        directory and configuration recorded by the report."""
        run = job.run
        report = replace(
            self.report,
            config=job.config,
            run_name=run.name,
            run_dir=str(run.dir) if run.dir else None,
        )
        return replace(self, job=job, report=report)

    def with_stage1_checkpoint(self, checkpoint: str) -> TrainSettings:
        """These settings with the stage-1 network loaded from ``checkpoint``, which the
        recorded configuration (and its digest) says too."""
        config = dict(self.job.config)
        config["backbone"] = dict(config["backbone"]) | {"checkpoint": checkpoint}
        return replace(
            self,
            job=replace(self.job, config=config),
            stage1=self.stage1.with_backbone(checkpoint=checkpoint),
            report=replace(self.report, config=config, digest=config_digest(config)),
        )

    def of_finished_run(self, run_dir: Path) -> TrainSettings:
        """These settings with the stage-1 network of the finished run in ``run_dir`` (see
        ``with_stage1_checkpoint``); ``PipelineError`` when it has none."""
        checkpoint = stage1_checkpoint(self.stage1.backbone, run_dir)
        if checkpoint is None:
            raise PipelineError(f"{run_dir} holds no stage-1 checkpoint; was the run finished?")
        return self.with_stage1_checkpoint(checkpoint)

    def calibration(self, run_dir: Path) -> CalibrationPlan:
        """Where the run in ``run_dir`` fits its temperatures (``eval.calibration_split``)."""
        return CalibrationPlan(
            split=self.calibration_split,
            stage2_splits=self.stage2.data.splits,
            trained_here=trained_here(self.stage1.backbone.checkpoint, run_dir),
            val_fraction=self.stage1.data.val_fraction,
            batch_size=self.eval.batch_size,
        )


def train_settings(cfg: DictConfig) -> TrainSettings:
    """Everything the training job of the validated configuration ``cfg`` takes."""
    whole = OmegaConf.to_object(cfg)  # the schema's typed record
    assert isinstance(whole, Config), "a configuration composed by config.load_config"
    job = job_settings(cfg)
    device = str(resolve_device(whole.trainer.accelerator))
    mc = whole.eval.mc_dropout
    return TrainSettings(
        job=job,
        kind=_kind(whole),
        stage1=Stage1Options(
            data=whole.data,
            backbone=whole.backbone,
            stage1=whole.stage1,
            trainer=whole.trainer,
            resume=job.run.resume,
            seed=job.run.seed,
        ),
        stage2=_stage2(whole.stage2, whole.data, job.run, whole.trainer),
        stage2_enabled=bool(whole.stage2.enabled),
        eval=whole.eval,
        report=ReportOptions(
            config=job.config,
            digest=config_digest(job.config),
            run_name=job.run.name,
            run_dir=str(job.run.dir) if job.run.dir else None,
            seed=job.run.seed,
            device=device,
            batch_size=whole.eval.batch_size,
            n_bins=whole.eval.n_bins,
            progress=bool(whole.trainer.enable_progress_bar),
            skip_bad_files=bool(whole.data.skip_bad_files),
        ),
        mc_dropout=MCDropout(mc.samples, mc.p, seed=mc.seed) if mc.samples > 0 else None,
        calibration_split=whole.eval.calibration_split,
        device=device,
    )


def _kind(whole: Config) -> str:
    """The job asked for: ``quality`` (``task: quality``), ``active`` (``active.enabled``) or
    ``two-stage`` (the default)."""
    if whole.task == "quality":
        return "quality"
    return "active" if whole.active.enabled else "two-stage"


def _data_identity(data: DataConfig) -> dict[str, Any]:
    """The data fields naming the images of a cached split; ``val_from`` only when it is not
    the default, so entries made before that option existed stay valid."""
    identity = {k: getattr(data, k) for k in _DATA_IDENTITY}
    if data.val_from != "train":
        identity["val_from"] = data.val_from
    return identity


def _stage2(
    s2: Stage2Config, data: DataConfig, run: RunOptions, trainer: TrainerConfig
) -> Stage2Settings:
    """Everything stage 2 takes from the ``stage2``, ``data``, ``run`` and ``trainer`` sections."""
    head = asdict(s2.head)
    training = TrainingData(
        splits=tuple(s2.splits),
        augment=s2.augment,
        passes=s2.passes,
        include_clean=s2.include_clean,
        noise_std=s2.noise_std,
        augmix_severity=s2.augmix_severity,
        extract_batch_size=s2.extract_batch_size,
        shard_batches=s2.shard_batches,
        identity=_data_identity(data),
        seed=run.seed,
    )
    return Stage2Settings(
        features=FeatureOptions(**asdict(s2.features)),
        head=HeadRecipe(**(head | {"hidden": tuple(head["hidden"])})),
        data=training,
        control=bool(s2.control),
        control_hp=bool(s2.control_hp),
        seed=run.seed,
        cache_dir=s2.cache_dir,
        resume=run.resume,
        progress=bool(trainer.enable_progress_bar),
        gradient_clip_val=trainer.gradient_clip_val,
    )
