"""The ``Explainer`` protocol: maps of the registered methods against Captum and
pytorch-grad-cam on the same model, layer and targets."""

from __future__ import annotations

import pytest
import torch

from introspect.explain import Explainer, create_explainer, gradcam, list_explainers
from introspect.explain.methods import MAP_METHODS
from tests.explain_nets import PoolNet

pytestmark = pytest.mark.usefixtures("single_thread")


def _setup() -> tuple[PoolNet, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    net = PoolNet().eval()
    images = torch.rand(2, 3, 10, 14, generator=torch.Generator().manual_seed(1))
    return net, images, torch.tensor([1, 2])


def test_gradcam_explainer_matches_pytorch_grad_cam() -> None:
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    net, images, target = _setup()
    explainer = create_explainer("gradcam", net, layer="conv2")
    assert isinstance(explainer, Explainer)
    maps = explainer.attribute(images, target=target)
    assert maps.shape == (2, 1, 10, 14)
    with GradCAM(model=net, target_layers=[net.conv2]) as library:
        reference = library(
            input_tensor=images, targets=[ClassifierOutputTarget(int(t)) for t in target]
        )
    torch.testing.assert_close(maps[:, 0], torch.from_numpy(reference))
    torch.testing.assert_close(maps[:, 0], gradcam(net, images, layer="conv2", target=target))


def test_gradient_explainers_match_captum() -> None:
    from captum.attr import IntegratedGradients, Saliency

    net, images, target = _setup()
    saliency = create_explainer("vanilla_gradient", net, normalize=False).attribute(images, target)
    reference = Saliency(net).attribute(images, target=target, abs=True).amax(1, keepdim=True)
    torch.testing.assert_close(saliency, reference)
    ig = create_explainer("integrated_gradients", net, normalize=False, steps=16)
    got = ig.attribute(images, target=target)
    reference = IntegratedGradients(net).attribute(
        images, target=target, n_steps=16, method="gausslegendre"
    )
    torch.testing.assert_close(got, reference.sum(1, keepdim=True), atol=1e-9, rtol=1e-5)


def test_registry_covers_every_map_method() -> None:
    assert set(MAP_METHODS) | {"random"} == set(list_explainers())
    net, images, _ = _setup()
    maps = create_explainer("random", net).attribute(images)
    assert maps.shape == (2, 1, 10, 14) and 0 <= maps.min() and maps.max() <= 1
    with pytest.raises(ValueError, match="unknown explainer 'nope'; choose one of .*gradcam"):
        create_explainer("nope", net)
