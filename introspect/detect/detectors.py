"""One detector protocol over every confidence score and supervised detector of ``scores``,
``detect`` and ``uncertainty``, and a registry to build them by name (``create_detector``).

A ``Detector`` is fitted with ``fit(loader) -> self`` (a no-op for the scores that need no
data) and scores a batch with ``score(batch) -> (B,)``, higher = more in-distribution. A batch
is an image tensor or a tuple whose first element is one (``(images, labels, ...)``). What
``fit`` reads depends on the detector:

- unsupervised ones with statistics (``mahalanobis``, ``layer_mahalanobis``): ``(images,
  class labels)`` batches of the training distribution;
- supervised ones (``logistic``, ``lid``, ``purview_detector``): ``(images, in_distribution)``
  batches, ``in_distribution`` 1 for in-distribution rows and 0 for challenging ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from introspect.backbones.head import resolve_head
from introspect.detect.batch import images_of
from introspect.detect.features import default_layers, layer_features
from introspect.detect.lid import lid_features
from introspect.detect.logistic import LogisticDetector
from introspect.detect.mahalanobis import LayerMahalanobis
from introspect.detect.posthoc import POSTHOC, IntrospectiveHidden, Penultimate
from introspect.models.stage2 import IntrospectiveClassifier
from introspect.scores.gradient import (
    PurviewDetector,
    gradnorm,
    gradtrust,
    purview_features,
    purview_score,
)
from introspect.scores.introspective import introspective_msp, introspective_odin
from introspect.scores.model_based import (
    ODIN_EPS,
    ODIN_T,
    Mahalanobis,
    logits_and_penultimate,
    odin,
)
from introspect.scores.output import energy, entropy, margin, max_logit, msp, nll
from introspect.uncertainty.ensemble import ensemble_probs
from introspect.uncertainty.mc_dropout import MCDropout
from introspect.uncertainty.measures import mutual_information, predictive_entropy


@runtime_checkable
class Detector(Protocol):
    """Fit (where needed), then score batches: higher = more in-distribution."""

    def fit(self, loader: Iterable[Any]) -> Detector:
        """Fit on ``loader``'s batches; returns ``self``."""
        ...

    def score(self, batch: Any) -> torch.Tensor:
        """``(B,)`` in-distribution confidences of a batch (images, or a tuple led by them)."""
        ...


def _device(model: nn.Module) -> torch.device:
    return next(iter(model.parameters())).device


class ModelDetector:
    """Base of the detectors on one classifier ``model`` (eval mode, logits out); ``head`` is
    its last linear layer (default: ``model.head`` or the last ``nn.Linear`` executed)."""

    def __init__(self, model: nn.Module, *, head: nn.Linear | None = None) -> None:
        self.model = model
        self.head = head

    def fit(self, loader: Iterable[Any]) -> ModelDetector:
        """Nothing to fit; returns ``self``."""
        return self

    def score(self, batch: Any) -> torch.Tensor:
        """``(B,)`` confidences of a batch, detached."""
        return self.confidence(images_of(batch).to(_device(self.model))).detach()

    def confidence(self, images: torch.Tensor) -> torch.Tensor:
        """``(B,)`` confidences of images on the model's device."""
        raise NotImplementedError

    def _head(self, images: torch.Tensor) -> nn.Linear:
        head = self.head if self.head is not None else getattr(self.model, "head", None)
        return resolve_head(self.model, head, images[:1])


class LogitDetector(ModelDetector):
    """A score of the logits alone (``msp``, ``energy``, ...): ``fn(model(images), **options)``."""

    def __init__(self, model: nn.Module, fn: Callable[..., torch.Tensor], **options: Any) -> None:
        super().__init__(model)
        self.fn, self.options = fn, options

    def confidence(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.fn(self.model(images), **self.options)


class GradNormDetector(ModelDetector):
    """GradNorm (``scores.gradnorm``) at temperature ``T``."""

    def __init__(self, model: nn.Module, *, T: float = 1.0, head: nn.Linear | None = None):
        super().__init__(model, head=head)
        self.T = T

    def confidence(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            logits, h = logits_and_penultimate(self.model, images, self._head(images))
        return gradnorm(logits, h.flatten(1), T=self.T)


class OdinDetector(ModelDetector):
    """ODIN (``scores.odin``), temperature ``T`` and input step ``eps`` in pixel units."""

    def __init__(self, model: nn.Module, *, T: float = ODIN_T, eps: float = ODIN_EPS) -> None:
        super().__init__(model)
        self.T, self.eps = T, eps

    def confidence(self, images: torch.Tensor) -> torch.Tensor:
        return odin(self.model, images, T=self.T, eps=self.eps)


class PurviewScore(ModelDetector):
    """The unsupervised Purview score (``scores.purview_score``) of one ``part`` of the
    selected parameters' per-sample gradient norms."""

    def __init__(
        self,
        model: nn.Module,
        *,
        part: str = "final",
        params: Sequence[str] | str | None = None,
    ) -> None:
        super().__init__(model)
        self.part, self.params = part, params

    def confidence(self, images: torch.Tensor) -> torch.Tensor:
        return purview_score(purview_features(self.model, images, self.params), self.part)


class MahalanobisDetector(ModelDetector):
    """Mahalanobis confidence of the penultimate features (``scores.Mahalanobis``), fitted on
    ``(images, labels)`` batches; ``eps > 0`` adds Lee et al.'s input preprocessing."""

    def __init__(
        self,
        model: nn.Module,
        *,
        num_classes: int,
        eps: float = 0.0,
        head: nn.Linear | None = None,
    ) -> None:
        super().__init__(model, head=head)
        self.gaussian, self.eps = Mahalanobis(num_classes), eps

    def fit(self, loader: Iterable[Any]) -> MahalanobisDetector:
        """Fit the class means and shared covariance; returns ``self``."""
        self.gaussian.fit(self.model, loader, head=self.head)
        return self

    def confidence(self, images: torch.Tensor) -> torch.Tensor:
        return self.gaussian.score_images(self.model, images, eps=self.eps, head=self.head)


class LayerMahalanobisDetector(ModelDetector):
    """Mahalanobis confidences of several layers (``detect.LayerMahalanobis``; default: the
    residual stages and the penultimate layer), combined as ``weights @ scores`` (default:
    their mean)."""

    def __init__(
        self,
        model: nn.Module,
        *,
        num_classes: int,
        layers: Sequence[str] | None = None,
        weights: Sequence[float] | None = None,
        eps: float = 0.0,
    ) -> None:
        super().__init__(model)
        self.layers = list(layers) if layers is not None else default_layers(model)
        if weights is not None and len(weights) != len(self.layers):
            raise ValueError(f"weights has {len(weights)} values for {len(self.layers)} layers")
        self.gaussians = LayerMahalanobis(num_classes, self.layers)
        self.weights, self.eps = weights, eps

    def fit(self, loader: Iterable[Any]) -> LayerMahalanobisDetector:
        """Fit every layer's Gaussians on ``(images, labels)`` batches; returns ``self``."""
        self.gaussians.fit(self.model, loader)
        return self

    def confidence(self, images: torch.Tensor) -> torch.Tensor:
        columns = self.gaussians.scores(self.model, images, eps=self.eps)
        if self.weights is None:
            return columns.mean(1)
        return columns @ torch.as_tensor(self.weights, dtype=columns.dtype, device=columns.device)


class MCDropoutDetector(ModelDetector):
    """MC dropout at the head input (``uncertainty.MCDropout``): ``measure`` ``"bald"``
    (negated mutual information) or ``"expected_entropy"`` (negated)."""

    def __init__(
        self,
        model: nn.Module,
        *,
        samples: int = 16,
        p: float = 0.5,
        seed: int = 0,
        measure: str = "bald",
        head: nn.Linear | None = None,
    ) -> None:
        super().__init__(model, head=head)
        if measure not in ("bald", "expected_entropy"):
            raise ValueError(f"measure must be bald or expected_entropy, got {measure!r}")
        self.dropout, self.measure, self.batches = MCDropout(samples, p, seed=seed), measure, 0

    def confidence(self, images: torch.Tensor) -> torch.Tensor:
        """The MC-dropout confidence; each call draws new masks (its ``key`` counts calls)."""
        samples = self.dropout.sample_logits(
            self.model, images, key=self.batches, head=self._head(images)
        )
        scores = self.dropout.scores(samples)
        self.batches += 1
        return scores[f"mcd_{self.measure}"]


class EnsembleDetector:
    """A deep ensemble of ``models``: ``measure`` ``"msp"`` (of the mean softmax),
    ``"entropy"`` (negated predictive entropy) or ``"bald"`` (negated mutual information)."""

    def __init__(self, models: Sequence[nn.Module], *, measure: str = "msp") -> None:
        if measure not in ("msp", "entropy", "bald"):
            raise ValueError(f"measure must be msp, entropy or bald, got {measure!r}")
        if len(models) < 2:
            raise ValueError(f"an ensemble needs at least two members, got {len(models)}")
        self.models, self.measure = list(models), measure

    def fit(self, loader: Iterable[Any]) -> EnsembleDetector:
        """Nothing to fit (the members are trained); returns ``self``."""
        return self

    def score(self, batch: Any) -> torch.Tensor:
        """``(B,)`` confidences of a batch."""
        images = images_of(batch).to(_device(self.models[0]))
        with torch.no_grad():
            logits = [m(images) for m in self.models]
        if self.measure == "msp":
            return ensemble_probs(logits).amax(1)
        probs = torch.stack([z.softmax(-1) for z in logits])
        if self.measure == "entropy":
            return -predictive_entropy(probs)
        return -mutual_information(probs)


class IntrospectiveDetector:
    """The confidence of a trained introspective head ``H`` (``IntrospectiveClassifier``):
    ``measure`` ``"msp"`` or ``"odin"`` (through the whole chain, ``T`` and ``eps``)."""

    def __init__(
        self,
        head: IntrospectiveClassifier,
        *,
        measure: str = "msp",
        T: float = ODIN_T,
        eps: float = ODIN_EPS,
    ) -> None:
        if measure not in ("msp", "odin"):
            raise ValueError(f"measure must be msp or odin, got {measure!r}")
        self.head, self.measure, self.T, self.eps = head, measure, T, eps

    def fit(self, loader: Iterable[Any]) -> IntrospectiveDetector:
        """Nothing to fit (train ``H`` first); returns ``self``."""
        return self

    def score(self, batch: Any) -> torch.Tensor:
        """``(B,)`` confidences of a batch."""
        images = images_of(batch).to(self.head.device)
        if self.measure == "msp":
            return introspective_msp(self.head, images)
        return introspective_odin(self.head, images, T=self.T, eps=self.eps)


class SupervisedDetector:
    """A classifier of in-distribution vs challenging inputs on ``features(images)`` rows:
    ``classifier`` ``"logistic"`` (``detect.LogisticDetector``) or ``"purview"``
    (``scores.PurviewDetector``, ``hidden`` widths). ``fit`` reads ``(images,
    in_distribution)`` batches."""

    def __init__(
        self,
        features: Callable[[torch.Tensor], torch.Tensor],
        *,
        classifier: str = "logistic",
        seed: int = 0,
        hidden: Sequence[int] = (64,),
        device: torch.device | str = "cpu",
    ) -> None:
        if classifier not in ("logistic", "purview"):
            raise ValueError(f"classifier must be logistic or purview, got {classifier!r}")
        self.features, self.classifier, self.seed = features, classifier, seed
        self.hidden, self.device = tuple(hidden), torch.device(device)
        self.fitted: LogisticDetector | PurviewDetector | None = None

    def fit(self, loader: Iterable[Any]) -> SupervisedDetector:
        """Fit on the features of every batch's in-distribution (1) and challenging (0) rows."""
        rows, flags = [], []
        for batch in loader:
            rows.append(self.features(images_of(batch).to(self.device)).detach().cpu())
            flags.append(torch.as_tensor(batch[1]).bool().cpu())
        x, inside = torch.cat(rows), torch.cat(flags)
        if inside.all() or not inside.any():
            raise ValueError("fit needs in-distribution (1) and challenging (0) rows in loader")
        if self.classifier == "logistic":
            self.fitted = LogisticDetector(self.seed).fit(x[inside], x[~inside])
        else:
            torch.manual_seed(self.seed)
            detector = PurviewDetector(x.shape[1], self.hidden)
            self.fitted = detector.fit(x[inside], x[~inside])
        return self

    def score(self, batch: Any) -> torch.Tensor:
        """``(B,)`` in-distribution confidences (the classifier's logit / decision function)."""
        if self.fitted is None:
            raise RuntimeError("the detector is not fitted; call fit(loader) first")
        x = self.features(images_of(batch).to(self.device)).detach().cpu()
        if isinstance(self.fitted, LogisticDetector):
            return self.fitted.score(x)
        with torch.no_grad():
            return self.fitted(x)


def lid_detector(
    model: nn.Module,
    *,
    reference: torch.Tensor,
    layers: Sequence[str] | None = None,
    k: int = 20,
    seed: int = 0,
) -> SupervisedDetector:
    """LID (Ma et al. 2018): logistic regression on the LID of every layer, estimated against
    the activations of the clean ``reference`` images."""
    chosen = list(layers) if layers is not None else default_layers(model)
    device = _device(model)
    with torch.inference_mode(False), torch.no_grad():
        _, acts = layer_features(model, reference.to(device), chosen)
    acts = [a.flatten(1) for a in acts]

    def features(images: torch.Tensor) -> torch.Tensor:
        return lid_features(model, images, acts, chosen, k).float()

    return SupervisedDetector(features, seed=seed, device=device)


def purview_detector(
    model: nn.Module,
    *,
    params: Sequence[str] | str | None = None,
    hidden: Sequence[int] = (64,),
    seed: int = 0,
) -> SupervisedDetector:
    """The supervised Purview detector: ``PurviewDetector`` on the per-sample gradient norms of
    the selected parameters (``purview_features``)."""

    def features(images: torch.Tensor) -> torch.Tensor:
        return purview_features(model, images, params)

    return SupervisedDetector(
        features, classifier="purview", hidden=hidden, seed=seed, device=_device(model)
    )


def _logits(fn: Callable[..., torch.Tensor], **fixed: Any) -> Callable[..., Detector]:
    def build(model: nn.Module, **options: Any) -> Detector:
        return LogitDetector(model, fn, **{**fixed, **options})

    build.__doc__ = f"A ``LogitDetector`` of ``{fn.__name__}``."
    return build


def _posthoc(name: str) -> Callable[..., Detector]:
    cls = POSTHOC[name]

    def build(model: nn.Module, *, head: nn.Linear | None = None, **options: Any) -> Detector:
        return cls(Penultimate(model, head), **options)

    build.__doc__ = f"``{cls.__name__}`` on the penultimate features of ``model``."
    return build


def _posthoc_introspective(name: str) -> Callable[..., Detector]:
    cls = POSTHOC[name]

    def build(head: IntrospectiveClassifier, **options: Any) -> Detector:
        return cls(IntrospectiveHidden(head), **options)

    build.__doc__ = f"``{cls.__name__}`` on the hidden features of the introspective head."
    return build


# name -> factory(model=..., **options); see create_detector.
DETECTORS: dict[str, Callable[..., Detector]] = {
    "msp": _logits(msp),
    "max_logit": _logits(max_logit),
    "energy": _logits(energy),
    "entropy": _logits(entropy),
    "margin": _logits(margin),
    "nll": _logits(nll),
    "gradtrust": _logits(gradtrust),
    "gradtrust_paper": _logits(gradtrust, form="paper"),
    "gradnorm": GradNormDetector,
    "odin": OdinDetector,
    "purview": PurviewScore,
    "mahalanobis": MahalanobisDetector,
    "layer_mahalanobis": LayerMahalanobisDetector,
    "mc_dropout": MCDropoutDetector,
    "ensemble": EnsembleDetector,
    "introspective": IntrospectiveDetector,
    "logistic": SupervisedDetector,
    "lid": lid_detector,
    "purview_detector": purview_detector,
    **{name: _posthoc(name) for name in POSTHOC},
    **{f"{name}_introspective": _posthoc_introspective(name) for name in POSTHOC},
}


def list_detectors() -> list[str]:
    """The names ``create_detector`` accepts, sorted."""
    return sorted(DETECTORS)


def create_detector(name: str, model: nn.Module | None = None, **options: Any) -> Detector:
    """The detector registered as ``name``, built on ``model`` with ``options``.

    Most detectors take the classifier as ``model``; ``ensemble`` takes ``models=[...]``,
    ``introspective`` and the ``*_introspective`` post-hoc detectors a trained head as
    ``head=``, ``logistic`` a ``features=`` function. The post-hoc detectors (``vim``,
    ``knn``, ``react``, ``ash``, ``dice``, ``gen``, ``she``, ``rmd``, ``nnguide``, ``fdbd``;
    ``detect.posthoc``) are fitted on ``(images, class labels)`` batches.
    Options are those of the detector's class (e.g. ``energy``: ``T``; ``mahalanobis``:
    ``num_classes``, ``eps``).
    """
    if name not in DETECTORS:
        raise ValueError(f"unknown detector {name!r}; choose one of {', '.join(list_detectors())}")
    if model is not None:
        options["model"] = model
    return DETECTORS[name](**options)
