"""Looking inside the network (filters, activations, top patches, neighbours, t-SNE), the
introspection and gallery figures, and the explain / explain-network commands."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from introspect.cli.explain import explain_main, explain_network_main
from introspect.explain import (
    MAP_METHODS,
    ExplanationError,
    activation_maps,
    activations_figure,
    class_gradients,
    contrast_cam,
    filters_figure,
    first_layer_filters,
    introspection_figure,
    methods_figure,
    nearest_neighbours,
    neighbours_figure,
    patches_figure,
    penultimate_features,
    top_activating_patches,
    tsne_embedding,
    tsne_figure,
)
from tests.explain_nets import PoolNet
from tests.test_explain_eval import make_run

SIZE = (10, 12)


pytestmark = pytest.mark.usefixtures("single_thread")


class Reordered(nn.Module):
    """Registered in another order than run: ``early`` runs first."""

    def __init__(self) -> None:
        super().__init__()
        self.late = nn.Conv2d(4, 5, 3, padding=1)
        self.early = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.late(F.relu(self.early(x)))).mean(dim=(2, 3)))


class LinearStack(nn.Module):
    """Three 3x3 convolutions (stride 1, padding 1), no nonlinearity: the activation at (r, c)
    depends on the input rows r-3 .. r+3 and columns c-3 .. c+3."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.Sequential(*[nn.Conv2d(c, 4, 3, padding=1) for c in (3, 4, 4)])
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.convs(x).mean(dim=(2, 3)))


def is_png(path: Path) -> bool:
    with Image.open(path) as image:
        image.verify()
        return image.format == "PNG"


def test_filters_are_the_first_executed_convolution() -> None:
    torch.manual_seed(0)
    model = Reordered()
    x = torch.rand(2, 3, *SIZE)
    torch.testing.assert_close(first_layer_filters(model, x), model.early.weight.detach())
    acts = activation_maps(model, x, "late")
    torch.testing.assert_close(acts, model.late(F.relu(model.early(x))).detach())


def test_top_patches_match_brute_force_and_receptive_fields() -> None:
    torch.manual_seed(0)
    model = LinearStack().eval()
    x = torch.rand(7, 3, 16, 16)
    with torch.no_grad():
        acts = model.convs(x)[:, 2]
    maxima = acts.flatten(1).max(1)
    order = maxima.values.argsort(descending=True)[:3]
    found = top_activating_patches(model, [x[:4], (x[4:], torch.zeros(3))], "convs.2", 2, k=3)
    assert found.indices.tolist() == order.tolist()
    torch.testing.assert_close(found.scores, maxima.values[order])
    for i, (idx, (r, c)) in enumerate(
        zip(found.indices.tolist(), found.positions.tolist(), strict=True)
    ):
        flat = maxima.indices[idx].item()
        assert (r, c) == divmod(flat, 16)
        expected = [max(r - 3, 0), max(c - 3, 0), min(r + 4, 16), min(c + 4, 16)]
        assert found.boxes[i].tolist() == expected
        t, lf, b, rt = expected
        torch.testing.assert_close(found.patches[i], x[idx, :, t:b, lf:rt])
    with pytest.raises(ExplanationError, match="channel must lie"):
        top_activating_patches(model, [x], "convs.2", 9)


def test_penultimate_features_and_neighbours_against_sklearn() -> None:
    from sklearn.neighbors import NearestNeighbors

    torch.manual_seed(0)
    net = PoolNet().eval()
    x = torch.rand(9, 3, *SIZE)
    labels = torch.arange(9) % 4
    feats = penultimate_features(net, [(x[:5], labels[:5]), (x[5:], labels[5:])])
    with torch.no_grad():
        expected = net.relu2(net.conv2(F.relu(net.conv1(x)))).mean(dim=(2, 3))
        predicted = net(x).argmax(1)
    torch.testing.assert_close(feats.features, expected)
    assert torch.equal(feats.labels, labels) and torch.equal(feats.predicted, predicted)
    distances, indices = nearest_neighbours(feats.features[:3], feats.features, 4)
    reference = NearestNeighbors(n_neighbors=4).fit(feats.features.numpy())
    ref_d, ref_i = reference.kneighbors(feats.features[:3].numpy())
    assert indices.tolist() == ref_i.tolist() and indices[:, 0].tolist() == [0, 1, 2]
    np.testing.assert_allclose(distances.numpy(), ref_d, atol=1e-6)
    _, others = nearest_neighbours(feats.features[:3], feats.features, 3, exclude_self=True)
    assert others.tolist() == ref_i[:, 1:].tolist()
    with pytest.raises(ExplanationError, match="exceeds"):
        nearest_neighbours(feats.features, feats.features, 9, exclude_self=True)


def test_tsne_keeps_separated_clusters_apart() -> None:
    from sklearn.manifold import trustworthiness

    generator = torch.Generator().manual_seed(0)
    centres = 10 * torch.eye(3, 16, dtype=torch.float64)
    features = torch.cat([c + torch.randn(20, 16, generator=generator) for c in centres])
    embedding = tsne_embedding(features, seed=1, perplexity=10)
    assert embedding.shape == (60, 2)
    np.testing.assert_allclose(embedding, tsne_embedding(features, seed=1, perplexity=10))
    assert trustworthiness(features.numpy(), embedding, n_neighbors=5) > 0.9
    labels = np.repeat(np.arange(3), 20)
    centroids = np.stack([embedding[labels == c].mean(0) for c in range(3)])
    spread = max(
        np.linalg.norm(embedding[labels == c] - centroids[c], axis=1).mean() for c in range(3)
    )
    gaps = [np.linalg.norm(centroids[a] - centroids[b]) for a, b in ((0, 1), (0, 2), (1, 2))]
    assert min(gaps) > 2 * spread


def test_class_gradients_are_per_class_outer_products() -> None:
    torch.manual_seed(0)
    net = PoolNet().eval()
    x = torch.rand(2, 3, *SIZE)
    with torch.no_grad():
        h = net.relu2(net.conv2(F.relu(net.conv1(x)))).mean(dim=(2, 3))
        p = net(x).softmax(1)
    got = class_gradients(net, x)
    assert got.shape == (2, 4, 4, 8)
    for q in range(4):
        expected = (p - F.one_hot(torch.tensor(q), 4))[:, :, None] * h[:, None, :]
        torch.testing.assert_close(got[:, q], expected, atol=1e-6, rtol=1e-5)


def test_figures_are_pngs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = PoolNet().eval()
    x = torch.rand(3, 3, *SIZE)
    names = ["a", "b", "c", "d"]
    cheap = {
        "rise": {"masks": 20},
        "lime": {"samples": 20, "segments": 4},
        "smoothgrad": {"samples": 2},
    }
    paths = [
        filters_figure(first_layer_filters(net, x), tmp_path / "f.png"),
        activations_figure(x[0], activation_maps(net, x[:1], "conv2")[0], tmp_path / "a.png"),
        patches_figure(
            [(c, top_activating_patches(net, [x], "conv1", c, k=2)) for c in (0, 1)],
            tmp_path / "p.png",
        ),
        neighbours_figure(
            x[:2], x[torch.tensor([[1, 2], [0, 2]])], tmp_path / "n.png", query_titles=["a", "b"]
        ),
        tsne_figure(
            np.random.default_rng(0).normal(size=(3, 2)), [0, 1, 1], names, tmp_path / "t.png"
        ),
        methods_figure(
            net, x[:2], names, tmp_path / "m.png", MAP_METHODS, options=cheap, labels=[0, 1]
        ),
        introspection_figure(net, x[0], names, tmp_path / "i.png", label=2),
    ]
    assert all(is_png(p) for p in paths)
    with Image.open(tmp_path / "i.png") as image:  # five classes in a row, two rows
        assert image.size[0] > 2 * image.size[1]
    with pytest.raises(ExplanationError, match="one \\(C, H, W\\)"):
        introspection_figure(net, x, names, tmp_path / "bad.png")
    with pytest.raises(ExplanationError, match="class names"):
        methods_figure(net, x, ["a"], tmp_path / "bad.png", MAP_METHODS)


def test_introspection_contrasts_are_contrast_cams_for_every_class() -> None:
    torch.manual_seed(0)
    net = PoolNet().eval()
    x = torch.rand(1, 3, *SIZE)
    p = int(net(x).argmax())
    maps = contrast_cam(net, x.expand(4, -1, -1, -1), target=p, contrast=torch.arange(4))
    for q in range(4):
        torch.testing.assert_close(maps[q : q + 1], contrast_cam(net, x, target=p, contrast=q))


@pytest.mark.slow
def test_explain_commands_draw_figures_of_a_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = make_run(tmp_path)
    code = explain_main([f"run={run_dir}", "figure=introspection", "index=2"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.strip() == str(run_dir / "explanations" / "introspection-2.png")
    assert is_png(Path(out.strip()))
    cheap = ["method.rise.masks=20", "method.lime.samples=20", "method.smoothgrad.samples=2"]
    code = explain_main(
        [f"run={run_dir}", "figure=methods", "n=2", f"out={tmp_path / 'm.png'}", *cheap]
    )
    out, err = capsys.readouterr()
    assert code == 0 and is_png(tmp_path / "m.png"), err
    for argv, message in (
        ([f"run={run_dir}", "figure=nope"], "figure must be one of"),
        ([f"run={run_dir}", "figure=introspection", "index=999"], "pick fewer"),
        ([f"run={run_dir}", "index=-1"], "index must be a non-negative integer"),
        ([f"run={run_dir}", "method.rise.masks=2"], "apply to figure=methods only"),
        ([f"run={run_dir}", "figure=methods", "method.rise.mask=2"], "rise has no option mask"),
    ):
        assert explain_main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    code = explain_network_main(
        [f"run={run_dir}", "n=30", "layer=net.features.0", "channels=0,1", "k=3", "queries=2"]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    folder = run_dir / "explanations" / "network"
    names = ["filters", "activations", "patches", "neighbours", "tsne"]
    assert out.split() == [str(folder / f"{n}.png") for n in names]
    assert all(is_png(folder / f"{n}.png") for n in names)
    assert explain_network_main([f"run={run_dir}", "channels=a"]) == 2
    assert "channels must be" in capsys.readouterr().err
    assert explain_network_main([f"run={run_dir}", "task=quality"]) == 2
    assert "is a quality run; explain-network explains" in capsys.readouterr().err
