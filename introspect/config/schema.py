"""Structured schema of every configuration group; the YAML files in ``configs/`` fill it in."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

# Names of the corruptions ``eval.corruptions`` may list (the CIFAR-10-C benchmark, its held-out
# four, the CURE-TSR additions): checked here so that a typo fails before torch is imported;
# tests/test_cli_torch_free.py checks them against ``introspect.corruptions.transforms.ALL_NAMES``.
CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur",
    "motion_blur", "zoom_blur", "snow", "frost", "fog", "brightness", "contrast",
    "elastic_transform", "pixelate", "jpeg_compression",
    "speckle_noise", "gaussian_blur", "spatter", "saturate",
    "decolorization", "overexposure", "underexposure", "haze", "lens_blur", "dirty_lens",
    "codec_error",
)  # fmt: skip

# Fields whose value must be one of a fixed set: dotted path -> valid values.
CHOICES: dict[str, tuple[str, ...]] = {
    "data.source": ("digits", "cifar10", "cifar100", "imagefolder", "npz", "synthetic"),
    "stage1.augment": ("none", "standard", "gaussian_noise", "augmix"),
    "stage1.recipe": (
        "custom", "standard", "noise", "augmix", "adversarial", "simclr", "denoising",
    ),
    "stage1.simclr.optim.name": ("sgd", "adamw"),
    "stage1.simclr.optim.schedule": ("cosine", "none"),
    "stage1.denoise.operation": ("gaussian", "dot"),
    "stage1.optim.name": ("sgd", "adamw"),
    "stage1.optim.schedule": ("cosine", "none"),
    "logger.wandb_mode": ("offline", "online", "disabled"),
    "stage2.features.loss": ("ce", "mse", "bce"),
    "stage2.features.target": ("ones", "uniform"),
    "stage2.splits": ("train", "val"),
    "stage2.features.normalize": ("none", "l2", "standardize"),
    "stage2.head.activation": ("relu", "gelu", "tanh", "silu"),
    "stage2.augment": ("none", "standard", "gaussian_noise", "augmix"),
    "stage2.head.optim.name": ("sgd", "adamw"),
    "stage2.head.optim.schedule": ("cosine", "none"),
    "eval.source": ("generated", "official"),
    "eval.corruptions": CORRUPTIONS,
    "eval.calibration_split": ("val", "train", "none"),
    "data.val_from": ("train", "test"),
    "task": ("classification", "quality"),
    "quality.database": ("proxy", "tid2013", "kadid10k", "livemd"),
    "quality.label": (
        "psnr", "ssim", "ms_ssim", "iw_ssim", "vif", "fsimc", "srsim", "gmsd", "ms_gmsd", "vsi",
        "haarpsi", "mdsi", "dss",
    ),
    "quality.baselines": (
        "psnr", "ssim", "ms_ssim", "iw_ssim", "vif", "fsimc", "srsim", "gmsd", "ms_gmsd", "vsi",
        "haarpsi", "mdsi", "dss",
    ),
    "quality.mapping": ("logistic5", "logistic4", "none"),
    "active.strategies": (
        "random", "entropy", "least_confidence", "margin", "bald", "badge", "batchbald",
    ),
    "active.sources": ("feedforward", "introspective"),
    # Lightning 2.x pass-through fields (tests/test_faults_config.py checks these against the
    # installed Lightning), checked here so that a typo fails before any work.
    "trainer.precision": (
        "16", "32", "64", "bf16", "16-true", "16-mixed", "bf16-true", "bf16-mixed", "32-true",
        "64-true", "transformer-engine", "transformer-engine-float16",
    ),
    "trainer.accelerator": ("auto", "cpu", "gpu", "cuda", "mps", "tpu"),
    "trainer.strategy": (
        "auto", "ddp", "ddp_find_unused_parameters_false", "ddp_find_unused_parameters_true",
        "ddp_fork", "ddp_fork_find_unused_parameters_false",
        "ddp_fork_find_unused_parameters_true", "ddp_notebook",
        "ddp_notebook_find_unused_parameters_false", "ddp_notebook_find_unused_parameters_true",
        "ddp_spawn", "ddp_spawn_find_unused_parameters_false",
        "ddp_spawn_find_unused_parameters_true", "deepspeed", "deepspeed_stage_1",
        "deepspeed_stage_2", "deepspeed_stage_2_offload", "deepspeed_stage_3",
        "deepspeed_stage_3_offload", "deepspeed_stage_3_offload_nvme", "fsdp", "fsdp_cpu_offload",
        "single_device", "single_tpu", "single_xla", "xla", "xla_debug",
    ),
}  # fmt: skip


class Range(NamedTuple):
    """Valid values of a numeric field: ``low``/``high`` bounds (None = unbounded), each
    inclusive unless its ``*_open`` flag is set."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies in the range."""
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return True

    def describe(self) -> str:
        """The range in interval notation, e.g. ``[1, inf)``."""
        low = "-inf" if self.low is None else f"{self.low:g}"
        high = "inf" if self.high is None else f"{self.high:g}"
        left = "(" if self.low is None or self.low_open else "["
        right = ")" if self.high is None or self.high_open else "]"
        return f"{left}{low}, {high}{right}"


_POSITIVE = Range(1)  # counts: at least one
_NON_NEGATIVE = Range(0)
_FRACTION = Range(0, 1, high_open=True)
_SEED = Range(0, 2**32 - 1)  # what numpy and Lightning accept as a seed

# Every numeric field of the schema: dotted path -> valid range (a list field: every element;
# a None value of an optional field is always valid). tests/test_config.py checks that no
# numeric field is missing here.
RANGES: dict[str, Range] = {
    "run.seed": _SEED,
    "data.val_fraction": _FRACTION,
    "data.test_fraction": _FRACTION,
    "data.split_seed": _SEED,
    "data.batch_size": _POSITIVE,
    "data.eval_batch_size": _POSITIVE,
    "data.num_workers": _NON_NEGATIVE,
    "data.image_size": _POSITIVE,
    "data.num_classes": Range(2),
    "data.num_samples": _POSITIVE,
    "data.train_limit": _POSITIVE,
    "backbone.num_classes": Range(2),
    "backbone.mean": Range(),
    "backbone.std": Range(0, low_open=True),
    "stage1.epochs": _POSITIVE,
    "stage1.noise_std": _NON_NEGATIVE,
    "stage1.augmix_severity": Range(1, 10),
    "stage1.augmix_jsd": _NON_NEGATIVE,
    "stage1.label_smoothing": _FRACTION,
    "stage1.optim.lr": Range(0, low_open=True),
    "stage1.optim.momentum": _FRACTION,
    "stage1.optim.weight_decay": _NON_NEGATIVE,
    "stage1.adversarial.epsilon": _NON_NEGATIVE,
    "stage1.adversarial.step_size": _NON_NEGATIVE,
    "stage1.adversarial.steps": _POSITIVE,
    "stage1.simclr.epochs": _POSITIVE,
    "stage1.simclr.temperature": Range(0, low_open=True),
    "stage1.simclr.projection_dim": _POSITIVE,
    "stage1.simclr.min_scale": Range(0, 1, low_open=True),
    "stage1.simclr.jitter": _NON_NEGATIVE,
    "stage1.simclr.optim.lr": Range(0, low_open=True),
    "stage1.simclr.optim.momentum": _FRACTION,
    "stage1.simclr.optim.weight_decay": _NON_NEGATIVE,
    "stage1.protopnet.warm_epochs": _NON_NEGATIVE,
    "stage1.protopnet.joint_epochs": _NON_NEGATIVE,
    "stage1.protopnet.last_layer_epochs": _NON_NEGATIVE,
    "stage1.protopnet.warm_lr": Range(0, low_open=True),
    "stage1.protopnet.trunk_lr": Range(0, low_open=True),
    "stage1.protopnet.add_on_lr": Range(0, low_open=True),
    "stage1.protopnet.prototype_lr": Range(0, low_open=True),
    "stage1.protopnet.last_layer_lr": Range(0, low_open=True),
    "stage1.protopnet.weight_decay": _NON_NEGATIVE,
    "stage1.protopnet.clst": _NON_NEGATIVE,
    "stage1.protopnet.sep": _NON_NEGATIVE,
    "stage1.protopnet.l1": _NON_NEGATIVE,
    "stage2.head.hidden": _POSITIVE,
    "stage2.head.dropout": _FRACTION,
    "stage2.head.epochs": _POSITIVE,
    "stage2.head.batch_size": _POSITIVE,
    "stage2.head.rank": _NON_NEGATIVE,
    "stage2.head.optim.lr": Range(0, low_open=True),
    "stage2.head.optim.momentum": _FRACTION,
    "stage2.head.optim.weight_decay": _NON_NEGATIVE,
    "stage2.passes": _POSITIVE,
    "stage2.noise_std": _NON_NEGATIVE,
    "stage2.augmix_severity": Range(1, 10),
    "stage2.extract_batch_size": _POSITIVE,
    "stage2.shard_batches": _POSITIVE,
    "eval.severities": Range(1, 5),
    "eval.chunk_size": _POSITIVE,
    "eval.seed": _SEED,
    "eval.n_bins": _POSITIVE,
    "eval.batch_size": _POSITIVE,
    "scores.max_samples": _POSITIVE,
    "scores.odin_T": Range(0, low_open=True),
    "scores.odin_eps": _NON_NEGATIVE,
    "scores.mahalanobis_eps": _NON_NEGATIVE,
    "scores.gradtrust_k": _POSITIVE,
    "scores.seed": _SEED,
    "scores.batch_size": _POSITIVE,
    "scores.attack.eps": _NON_NEGATIVE,
    "scores.attack.alpha": Range(0, low_open=True),
    "scores.attack.steps": _POSITIVE,
    "scores.attack.cw_c": Range(0, low_open=True),
    "scores.attack.cw_kappa": _NON_NEGATIVE,
    "scores.attack.cw_steps": _POSITIVE,
    "scores.attack.cw_lr": Range(0, low_open=True),
    "scores.attack.seed": _SEED,
    "scores.detect.lid_k": _POSITIVE,
    "scores.detect.lid_reference": _POSITIVE,
    "scores.detect.mahalanobis_eps": _NON_NEGATIVE,
    "trainer.num_nodes": _POSITIVE,
    "trainer.log_every_n_steps": _POSITIVE,
    "trainer.gradient_clip_val": _NON_NEGATIVE,
    "trainer.timeout_s": Range(0, low_open=True),
    "stage1.ensemble": _POSITIVE,
    "eval.mc_dropout.samples": _NON_NEGATIVE,
    "eval.mc_dropout.p": _FRACTION,
    "eval.mc_dropout.seed": _SEED,
    "quality.image_size": Range(16),
    "quality.severities": Range(1, 5),
    "quality.val_fraction": _FRACTION,
    "quality.test_fraction": Range(0, 1, low_open=True, high_open=True),
    "quality.outlier_std": Range(0, low_open=True),
    "quality.outlier_k": Range(0, low_open=True),
    "quality.contrasts": Range(),
    "quality.train.epochs": _POSITIVE,
    "quality.train.batch_size": _POSITIVE,
    "quality.train.patch_size": Range(4),
    "quality.train.patches": _POSITIVE,
    "quality.train.lr": Range(0, low_open=True),
    "quality.train.weight_decay": _NON_NEGATIVE,
    "quality.batch_size": _POSITIVE,
    "quality.explain_contrasts": Range(),
    "active.initial": _POSITIVE,
    "active.per_round": _POSITIVE,
    "active.rounds": _NON_NEGATIVE,
    "active.mc_samples": Range(2),
    "active.mc_p": Range(0, 1, low_open=True, high_open=True),
    "active.noise_std": _NON_NEGATIVE,
    "active.noise_seed": _SEED,
    "active.batch_size": _POSITIVE,
    "active.pool_size": _NON_NEGATIVE,
    "active.test_size": _NON_NEGATIVE,
}


@dataclass
class DataConfig:
    """Where images come from and how they are split and batched."""

    source: str = "digits"
    root: str = "~/.cache/introspect"
    path: str | None = None
    test_path: str | None = None
    download: bool = True
    val_fraction: float = 0.1
    # The pool the validation split is held out of: "train", or "test" for a backbone trained
    # elsewhere on every training image (val is then data it has never seen).
    val_from: str = "train"
    test_fraction: float = 0.2
    split_seed: int = 0
    batch_size: int = 128
    eval_batch_size: int | None = None
    num_workers: int = 0
    pin_memory: bool = False
    image_size: int | None = None
    num_classes: int = 10
    num_samples: int = 512
    # imagefolder: decode every image file once into memory (cached under root/decoded).
    decode: bool = False
    # imagefolder: every image file is verified before any work and an unreadable one stops
    # the run; true leaves such files out instead (their count is printed and recorded).
    skip_bad_files: bool = False
    # At most this many training images (a subset seeded by split_seed, taken after the
    # validation split); null = all. For smoke runs of big experiments.
    train_limit: int | None = None
    # Stage-1 training reads the train split once into a tensor on the training device and
    # shuffles, slices and augments it there (recipes whose augmentations are crop/flip and
    # Gaussian noise; one process): the fast GPU path of the Table-1 suite.
    on_device: bool = False


@dataclass
class EnsembleMemberConfig:
    """One member of ``backbone.ensemble_checkpoints``: a backbone name (default: the run's
    ``backbone.name``, whose options it then shares) and its checkpoint."""

    name: str | None = None
    checkpoint: str | None = None


@dataclass
class BackboneConfig:
    """Which stage-1 network, from which checkpoint; see ``introspect.backbones.load_backbone``."""

    name: str = "small_cnn"
    checkpoint: str | None = None
    num_classes: int | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    head: str | None = None
    cifar_stem: bool = False
    pretrained: bool = False
    trust_checkpoint: bool = False
    kwargs: dict[str, Any] = field(default_factory=dict)
    # Existing networks evaluated as a deep ensemble (head "ensemble"); see runs.baselines.
    ensemble_checkpoints: list[EnsembleMemberConfig] = field(default_factory=list)


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule."""

    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "cosine"


@dataclass
class AdversarialConfig:
    """PGD adversarial training (L-infinity) for stage 1."""

    enabled: bool = False
    epsilon: float = 8 / 255
    step_size: float = 2 / 255
    steps: int = 7
    random_start: bool = True


@dataclass
class ProtoPNetConfig:
    """Stage-1 phases of a ``protopnet`` backbone (Chen et al. 2019), used instead of
    ``epochs``/``optim``: ``warm_epochs`` with the trunk frozen (add-on and prototypes at
    ``warm_lr``), ``joint_epochs`` training all but the last layer, one push, then
    ``last_layer_epochs`` of the last layer alone with ``l1`` on its wrong-class connections.
    Loss: cross-entropy + ``clst`` x cluster + ``sep`` x separation (separation is minus the
    distance to the nearest other-class prototype). Adam; ``weight_decay`` on trunk and add-on.
    """

    warm_epochs: int = 5
    joint_epochs: int = 10
    last_layer_epochs: int = 5
    warm_lr: float = 3e-3
    trunk_lr: float = 1e-3
    add_on_lr: float = 3e-3
    prototype_lr: float = 3e-3
    last_layer_lr: float = 1e-3
    weight_decay: float = 1e-3
    clst: float = 0.8
    sep: float = 0.08
    l1: float = 1e-4


@dataclass
class SimCLRConfig:
    """Contrastive pre-training of the stage-1 trunk (recipe ``simclr``; Chen et al. 2020),
    before the classifier head is trained for ``stage1.epochs``.

    ``epochs``: pre-training epochs over the training split, two SimCLR views per image
    (random resized crop of scale ``[min_scale, 1]``, horizontal flip, colour jitter of
    strength ``jitter`` with p = 0.8, grayscale with p = 0.2; no blur at 32 px);
    ``temperature``: of the NT-Xent loss; ``projection_dim``: output of the 2-layer projection
    MLP; ``finetune``: false (default) trains only the head on the frozen trunk (linear
    evaluation, SimCLR's protocol, so the row measures the contrastive representation), true
    trains the whole network with ``stage1.optim``.
    """

    epochs: int = 100
    temperature: float = 0.5
    projection_dim: int = 128
    min_scale: float = 0.08
    jitter: float = 0.5
    finetune: bool = False
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=0.06, nesterov=False, weight_decay=5e-4)
    )


@dataclass
class DenoiseConfig:
    """Feature-denoising blocks (recipe ``denoising``; Xie et al. 2019) after every residual
    stage of the backbone: non-local means with ``operation`` ``gaussian`` (softmax of scaled
    dot products) or ``dot`` (dot products over the number of positions), a 1x1 convolution
    and a residual connection; ``embed`` adds the 1x1 embeddings theta/phi (half the channels)
    of the paper before the affinities; ``stages``: the ``layer<k>`` stages followed by a block
    (null: all; the affinities cost (H W)^2 per image, 1 M at 32 x 32)."""

    operation: str = "gaussian"
    embed: bool = True
    stages: list[str] | None = None


@dataclass
class Stage1Config:
    """Training recipe of the feed-forward (stage-1) classifier.

    ``recipe``: ``custom`` trains with ``augment`` and ``adversarial`` as set; the Table-1
    recipes fix them (see ``introspect.stages.recipes``): ``standard`` (crop + flip), ``noise``
    (crop + flip + Gaussian noise of ``noise_std``), ``augmix`` (crop + flip + AugMix),
    ``adversarial`` (crop + flip, PGD training with ``adversarial``), ``simclr`` (``simclr``
    pre-training, then the head with crop + flip) and ``denoising`` (``denoise`` blocks in the
    backbone, PGD training with ``adversarial``).
    """

    epochs: int = 15
    recipe: str = "custom"
    augment: str = "none"
    noise_std: float = 0.1
    augmix_severity: int = 3
    # With AugMix: weight of its Jensen-Shannon consistency loss over the clean image and two
    # AugMix draws (3 passes per image; the AugMix paper: 12); 0 = cross-entropy on one draw.
    augmix_jsd: float = 0.0
    label_smoothing: float = 0.0
    # Stage-1 networks trained with different seeds; K >= 2 adds head "ensemble" (stage 2 and
    # the feed-forward head stay on the first member).
    ensemble: int = 1
    optim: OptimConfig = field(default_factory=OptimConfig)
    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)
    simclr: SimCLRConfig = field(default_factory=SimCLRConfig)
    denoise: DenoiseConfig = field(default_factory=DenoiseConfig)
    protopnet: ProtoPNetConfig = field(default_factory=ProtoPNetConfig)


@dataclass
class FeatureConfig:
    """Options of the introspective gradient feature (docs/concepts.md); ``gradients.extract``."""

    loss: str = "ce"
    target: str = "ones"
    per_class: bool = False
    include_bias: bool = False
    normalize: str = "l2"


@dataclass
class HeadConfig:
    """The stage-2 MLP ``H`` and its training (shared by the introspective and control heads).

    ``rank``: 0 gives the introspective head a full first layer (features x ``hidden[0]``
    weights, at most ``models.stage2.MAX_FULL_WEIGHTS`` = 50 M); r > 0 a low-rank bilinear one
    on the gradient factors, ``hidden[0]·r·(N + D)`` weights.
    """

    hidden: list[int] = field(default_factory=lambda: [256, 128])
    rank: int = 0
    dropout: float = 0.1
    activation: str = "relu"
    epochs: int = 40
    batch_size: int = 128
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(name="adamw", lr=1e-3, weight_decay=1e-4)
    )


@dataclass
class Stage2Config:
    """Stage 2: gradient features, the data recipe they are extracted from, the heads on top.

    ``control``: also train the control head on the penultimate activations ``h``;
    ``control_hp``: also train the control head on ``[h, p]`` (``h`` normalized as the
    control's, then the network's softmax output ``p``), the control for the gradient's form;
    ``splits``: which splits of the data H is trained on (``train`` and/or ``val``);
    ``augment``: the augmentation applied to those images before feature extraction, with
    ``passes`` augmented copies of each split (``include_clean`` adds the un-augmented copy).
    """

    enabled: bool = True
    control: bool = True
    control_hp: bool = True
    features: FeatureConfig = field(default_factory=FeatureConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    splits: list[str] = field(default_factory=lambda: ["train"])
    augment: str = "none"
    passes: int = 1
    include_clean: bool = False
    noise_std: float = 0.1
    augmix_severity: int = 3
    cache_dir: str = "~/.cache/introspect/features"
    extract_batch_size: int = 256
    # Batches per feature-cache shard: the unit of resuming, and what extraction holds in memory.
    shard_batches: int = 8


@dataclass
class SourceSplitConfig:
    """One split of another data source, read with the run's data settings: an
    ``eval.extra`` split (e.g. a JPEG re-encoding of the test set; same classes and image size
    as the run's data) or a ``scores.ood`` set (any classes; resized to the run's image size).

    ``source``/``path``/``test_path`` as in ``DataConfig``; ``split`` is which of its splits is
    used (``train``, ``val``, ``test`` or ``all`` of its images).
    """

    source: str = "imagefolder"
    path: str | None = None
    test_path: str | None = None
    split: str = "test"


@dataclass
class MCDropoutConfig:
    """MC dropout of the feed-forward network (head ``mc_dropout``): ``samples`` stochastic
    passes (0 = off) with dropout ``p`` at the head input and in the backbone's dropout layers;
    ``seed`` fixes the draws."""

    samples: int = 0
    p: float = 0.1
    seed: int = 0


@dataclass
class EvalConfig:
    """Evaluation splits: the clean test split, ``<corruption>/<severity>`` cells of it and any
    ``extra`` named splits.

    ``source``: ``generated`` corrupts the test split on the fly (seeded per cell by ``seed``,
    ``chunk_size`` images at a time, optionally cached under ``cache_dir``); ``official`` reads
    the released CIFAR-10-C / CIFAR-100-C arrays in ``official_dir``.

    ``calibration_split``: where the temperature of every head's tempered twin (``*_ts``) is
    fitted: ``val`` (default), ``train`` or ``none``; a head trained on that split is not
    tempered (the run says why). ``mc_dropout``: see ``MCDropoutConfig``.
    """

    clean: bool = True
    corruptions: list[str] = field(default_factory=list)
    severities: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    source: str = "generated"
    official_dir: str | None = None
    cache_dir: str | None = None
    chunk_size: int = 256
    extra: dict[str, SourceSplitConfig] = field(default_factory=dict)
    seed: int = 0
    n_bins: int = 15
    batch_size: int = 256
    calibration_split: str = "val"
    mc_dropout: MCDropoutConfig = field(default_factory=MCDropoutConfig)


@dataclass
class AttackConfig:
    """Settings of the ``scores.attacks`` (``introspect.attacks``), images in ``[0, 1]``.

    ``eps``: L-inf budget of fgsm, bim, pgd and iterll; ``alpha``, ``steps``: their step size
    and number of steps (fgsm takes one step of ``eps``); pgd starts at a random point seeded by
    ``seed``. ``cw_c``, ``cw_kappa``, ``cw_steps``, ``cw_lr``: C&W L2's constant, confidence,
    Adam steps and learning rate (no binary search).
    """

    eps: float = 0.03137254901960784  # 8/255
    alpha: float = 0.00784313725490196  # 2/255
    steps: int = 10
    cw_c: float = 1.0
    cw_kappa: float = 0.0
    cw_steps: int = 20
    cw_lr: float = 0.01
    seed: int = 0


@dataclass
class DetectConfig:
    """The detectors of ``scores.detectors`` (``introspect.detect``).

    ``layers``: the layers of LID and the Mahalanobis feature ensemble (``null``: every
    ``layer<k>`` stage and the penultimate features). ``lid_k``: neighbours of the LID estimate;
    ``lid_reference``: clean training images the neighbours are taken from.
    ``mahalanobis_eps``: input preprocessing of M(P) and M(P+FE) (pixel units; Lee et al. tune it
    on adversarial validation data, here it is fixed).
    """

    layers: list[str] | None = None
    lid_k: int = 20
    lid_reference: int = 500
    mahalanobis_eps: float = 0.0014


@dataclass
class ScoresConfig:
    """The OOD-detection and trust evaluation of a finished run (``python evaluate.py scores``).

    - ``ood``: named OOD sets, scored against the run's clean test split (in-distribution).
    - ``noise``: add ``noise``, seeded uniform-noise images of the run's image shape, as many
      as in-distribution samples are scored.
    - ``max_samples``: at most this many samples of each set (a subset seeded by ``seed``);
      ``null`` scores every sample.
    - ``purview``: the Purview scores (per-sample gradients of every parameter, the most
      expensive score).
    - ``purview_detector``: also train a ``PurviewDetector`` per OOD set on half of that set and
      half of the in-distribution samples and report it on the other halves (a *supervised*
      detector, ``purview_detector_supervised``); needs ``purview``.
    - ``odin_T``, ``odin_eps``: ODIN temperature and input perturbation (pixel units; also used
      by ``int_odin``). ``mahalanobis_eps``: Mahalanobis input perturbation (0 = none).
    - ``gradtrust_k``: number of counterfactual classes of the paper's GradTrust form.
    - ``trust``: the trust task (AUAC/AUFC) on the clean split, every ``eval.extra`` split and
      the pooled corruption cells (``corrupted``).
    - ``seed``: seeds the subsets, the noise images and the detector.
    - ``batch_size``: images per scored batch.
    - ``attacks``: attacks (``fgsm``, ``bim``, ``pgd``, ``cw``, ``iterll``) run on the clean
      in-distribution images with ``attack`` settings; each adds the challenging set
      ``adv_<attack>`` (its successful adversarial images of correctly classified ones) and
      reports the attack's success rate.
    - ``corruption_detection``: every ``eval.corruptions x eval.severities`` cell (of the same
      clean images) becomes a challenging set.
    - ``detectors``: the detection task: every challenging set (OOD, adversarial, corrupted)
      against the clean images, on held-out halves, with LID, Mahalanobis M(V)/M(P)/M(FE)/
      M(P+FE), the Purview detector (needs ``purview``) and the unsupervised scores (``detect``).
    - ``posthoc``: post-hoc detectors of the detector registry (``introspect.detect``:
      ``vim``, ``knn``, ``react``, ``ash``, ``dice``, ``gen``, ``she``, ``rmd``, ``nnguide``,
      ``fdbd``, and each as ``<name>_introspective`` on the introspective head), fitted on the
      training split and scored beside the other scores (``<name>``, ``int_<name>``).
    """

    ood: dict[str, SourceSplitConfig] = field(default_factory=dict)
    noise: bool = True
    max_samples: int | None = 2000
    purview: bool = True
    purview_detector: bool = False
    odin_T: float = 1000.0
    odin_eps: float = 0.0014
    mahalanobis_eps: float = 0.0
    gradtrust_k: int = 3
    trust: bool = True
    seed: int = 0
    batch_size: int = 128
    attacks: list[str] = field(default_factory=list)
    attack: AttackConfig = field(default_factory=AttackConfig)
    corruption_detection: bool = False
    detectors: bool = False
    detect: DetectConfig = field(default_factory=DetectConfig)
    posthoc: list[str] = field(default_factory=list)


@dataclass
class QualityTrainConfig:
    """Training of the quality model on random patches (see ``quality.model.QualityTraining``)."""

    epochs: int = 15
    batch_size: int = 16
    patch_size: int = 64
    patches: int = 2
    lr: float = 3e-3
    weight_decay: float = 1e-4


@dataclass
class QualityConfig:
    """The image quality task (``task: quality``; ``introspect.quality``).

    - ``database``: ``proxy`` (scikit-image samples distorted with ``distortions`` at
      ``severities``, ``image_size`` pixels square, scored by the full-reference ``label``) or a
      released database read from ``path`` (``tid2013``, ``kadid10k``, ``livemd``).
    - Splits are by reference content: ``val_fraction``/``test_fraction`` of the references,
      drawn with ``data.split_seed``.
    - ``contrasts``: the contrast levels q' of the introspective features ("why q, rather than
      q'?") as fractions of the training scores' range (0 = lowest, 1 = highest score).
    - ``baselines``: full-reference metrics reported beside the models (never the ``label``).
    - ``mapping``: the monotonic map fitted before RMSE, PLCC and the outlier ratio.
    - ``outlier_std``, ``outlier_k``: the outlier ratio counts errors beyond ``outlier_k``
      standard deviations of the opinion scores; data without them (the proxy, LIVE MD) use
      ``outlier_std`` (in score units) for every image.
    - ``explain_contrasts``: the q' (fractions, as ``contrasts``) of the Contrast-CAM figure.
    """

    database: str = "proxy"
    path: str | None = None
    references: list[str] = field(
        default_factory=lambda: [
            "astronaut", "camera", "coffee", "chelsea", "rocket", "coins", "moon", "page",
            "hubble_deep_field", "immunohistochemistry", "gravel", "clock",
        ]
    )  # fmt: skip
    distortions: list[str] = field(
        default_factory=lambda: [
            "gaussian_noise", "impulse_noise", "defocus_blur", "contrast", "pixelate",
            "jpeg_compression",
        ]
    )  # fmt: skip
    severities: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    image_size: int = 128
    label: str = "ms_ssim"
    cache_dir: str | None = "~/.cache/introspect/quality"
    val_fraction: float = 0.2
    test_fraction: float = 0.3
    contrasts: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    baselines: list[str] = field(
        default_factory=lambda: ["psnr", "ssim", "iw_ssim", "vif", "fsimc", "srsim", "gmsd"]
    )
    mapping: str = "logistic5"
    outlier_std: float = 0.05
    outlier_k: float = 2.0
    batch_size: int = 32
    train: QualityTrainConfig = field(default_factory=QualityTrainConfig)
    explain_contrasts: list[float] = field(default_factory=lambda: [1.0, 0.75, 0.5, 0.25])


@dataclass
class TrainerConfig:
    """Arguments forwarded to ``lightning.Trainer``.

    - ``timeout_s``: in a multi-process run, how long (seconds, > 0) a process waits for the
      others in a collective operation, and at the start for all of them to join, before it
      stops with an error; once another process has died, a process stops at its next
      collective operation or at most ``timeout_s`` later.
    """

    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    deterministic: bool = False
    log_every_n_steps: int = 10
    enable_progress_bar: bool = True
    gradient_clip_val: float | None = None
    limit_train_batches: Any = None
    limit_val_batches: Any = None
    fast_dev_run: bool = False
    timeout_s: int = 300
    # Channels-last memory format for stage-1 training and for every pass of the frozen network
    # (feature extraction, evaluation): faster convolutions on CUDA with bf16 and on CPU (a
    # ResNet-20 forward pass 1.3-1.6x on 1-2 cores); values equal up to float rounding.
    channels_last: bool = False


@dataclass
class LoggerConfig:
    """Experiment loggers: CSV always, Weights & Biases when enabled."""

    csv: bool = True
    wandb: bool = False
    wandb_mode: str = "offline"
    project: str = "introspect"
    entity: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class ActiveConfig:
    """Pool-based active learning (``runs.active``), used instead of the two-stage job when
    ``enabled``: the pool is the train split, ``initial`` of its images (drawn with the run
    seed) are labelled at round 0, then each of ``rounds`` rounds trains stage 1 (``stage1.*``)
    and the introspective head (``stage2.head`` and ``stage2.features``) on the labelled
    images, scores the unlabelled ones and labels ``per_round`` more.

    - ``strategies`` × ``sources``: one learning curve per acquisition function computed from
      the feed-forward network's or the introspective head's outputs (``random`` once).
    - ``warm_start``: stage 1 continues from the previous round's weights instead of starting
      from its initial weights.
    - ``mc_samples``/``mc_p``: MC-dropout samples for BALD and BatchBALD, dropout at the input
      of the acquiring classifier's last linear layer.
    - ``noise_std``/``noise_seed``: the Gaussian-noise test split (i.i.d. N(0, σ²) per pixel,
      clipped to [0, 1]) evaluated beside the clean one.
    - ``batch_size``: images per batch when scoring the pool and evaluating.
    - ``pool_size``/``test_size``: when above 0, the pool is that many images of the train split
      and the test splits that many of the test split, drawn once with ``data.split_seed``
      (the same subsets for every run seed); 0 keeps the whole split.
    """

    enabled: bool = False
    strategies: list[str] = field(
        default_factory=lambda: ["random", "entropy", "least_confidence", "margin", "bald", "badge"]
    )
    sources: list[str] = field(default_factory=lambda: ["feedforward", "introspective"])
    initial: int = 20
    per_round: int = 20
    rounds: int = 5
    warm_start: bool = False
    mc_samples: int = 20
    mc_p: float = 0.25
    noise_std: float = 0.1
    noise_seed: int = 0
    batch_size: int = 256
    pool_size: int = 0
    test_size: int = 0


@dataclass
class RunConfig:
    """Identity and location of one run."""

    name: str | None = None
    dir: str | None = None
    root: str = "runs"
    seed: int = 0
    # A directory holds one run: starting one where a run exists is refused unless it is
    # cleared first (overwrite) or the run there is continued (resume).
    overwrite: bool = False
    resume: bool = False


@dataclass
class Config:
    """The whole, resolved configuration of a run."""

    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    eval: EvalConfig = field(default_factory=EvalConfig)
    scores: ScoresConfig = field(default_factory=ScoresConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    # "classification" (the default pipeline) or "quality" (image quality assessment).
    task: str = "classification"
    quality: QualityConfig = field(default_factory=QualityConfig)
    active: ActiveConfig = field(default_factory=ActiveConfig)
    experiment: str | None = None


GROUPS: tuple[str, ...] = ("data", "backbone", "trainer", "logger")
