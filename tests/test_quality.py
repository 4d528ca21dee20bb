"""The quality task: regression introspective features (against autograd), database readers
(on tiny generated trees), the proxy set (against piq), patches, Contrast-CAM for regression
(against captum) and the end-to-end proxy run with its explanation figure."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from introspect.backbones import load_backbone
from introspect.gradients import extract_regression
from introspect.quality import QualityDataError, build_proxy_set, split_by_reference
from introspect.quality.databases import load_kadid10k, load_livemd, load_tid2013
from introspect.quality.model import QualityModel, random_patches

pytestmark = pytest.mark.usefixtures("single_thread")


class Scored(nn.Module):
    """conv -> ReLU -> pool -> Linear(D, 1) -> affine: the head is followed by a rescaling."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.head = nn.Linear(6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x)).mean(dim=(2, 3))
        return 0.3 * self.head(h) + 0.7


def _autograd_features(model: nn.Module, head: nn.Linear, images, contrasts) -> torch.Tensor:
    rows = []
    for image in images:
        blocks = []
        for q in contrasts:
            model.zero_grad()
            loss = (model(image[None])[0, 0] - q) ** 2
            loss.backward()
            blocks += [head.weight.grad.flatten().clone(), head.bias.grad.clone()]
        rows.append(torch.cat(blocks))
    return torch.stack(rows)


@pytest.mark.parametrize("kind", ["toy", "quality_model"])
def test_regression_features_match_autograd(kind: str) -> None:
    torch.manual_seed(0)
    if kind == "toy":
        model = Scored().double()
        head = model.head
    else:
        backbone = load_backbone("small_cnn", num_classes=1, input_size=(3, 8, 8))
        model = QualityModel(backbone, mean=3.0, std=2.0).double().eval()
        head = model.head
    images = torch.rand(5, 3, 12, 12, dtype=torch.float64)
    contrasts = [0.0, 0.5, 1.25]
    reference = _autograd_features(model, head, images, contrasts)
    model.zero_grad(set_to_none=True)
    ours = extract_regression(model, images, contrasts, include_bias=True, normalize="none")
    torch.testing.assert_close(ours, reference)
    # Weight blocks only, and the L2-normalized rows.
    d = head.in_features
    weights = reference.reshape(5, 3, d + 1)[..., :d].reshape(5, -1)
    torch.testing.assert_close(
        extract_regression(model, images, contrasts, normalize="none"), weights
    )
    torch.testing.assert_close(
        extract_regression(model, images, contrasts),
        weights / weights.norm(dim=1, keepdim=True),
    )
    assert all(p.grad is None for p in model.parameters())  # parameters untouched


def test_regression_features_refuse_multi_output_models_and_no_contrasts() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    with pytest.raises(ValueError, match="one score per image"):
        extract_regression(net, torch.rand(2, 3, 2, 2), [0.5])
    with pytest.raises(ValueError, match="at least one contrast"):
        extract_regression(
            nn.Sequential(nn.Flatten(), nn.Linear(12, 1)), torch.rand(2, 3, 2, 2), []
        )


def _write(path: Path, seed: int, size: tuple[int, int] = (12, 10)) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path, format="BMP")


def test_tid2013_layout(tmp_path: Path) -> None:
    root = tmp_path / "tid2013"
    for r in (1, 2):
        _write(root / "reference_images" / f"I{r:02d}.BMP", r)
    names, lines = [], []
    for r in (1, 2):
        for d in (1, 7):
            for level in (1, 5):
                name = f"i{r:02d}_{d:02d}_{level}.bmp"
                _write(root / "distorted_images" / (name.upper() if d == 7 else name), r * d)
                names.append(name)
                lines.append(f"{r + d / 10 + level / 100:.5f} {name}")
    (root / "mos_with_names.txt").write_text("\n".join(lines) + "\n")
    (root / "mos_std.txt").write_text("\n".join(f"0.{i + 1}" for i in range(8)) + "\n")
    data = load_tid2013(root)
    assert len(data) == 8 and data.num_references == 2 and data.higher_is_better
    np.testing.assert_allclose(data.scores, [float(line.split()[0]) for line in lines])
    np.testing.assert_allclose(data.stds, [0.1 * (i + 1) for i in range(8)])
    assert data.reference_index.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert data.distortions[:4] == ["tid01", "tid01", "tid07", "tid07"]
    assert data.levels.tolist()[:4] == [1, 5, 1, 5]
    pixels = np.array(Image.open(root / "distorted_images" / "I01_07_5.BMP"))
    torch.testing.assert_close(
        data.images([3])[0], torch.from_numpy(pixels).permute(2, 0, 1).float() / 255
    )
    ref = np.array(Image.open(root / "reference_images" / "I02.BMP"))
    torch.testing.assert_close(
        data.references([5])[0], torch.from_numpy(ref).permute(2, 0, 1).float() / 255
    )
    (root / "mos_std.txt").write_text("0.1\n")
    with pytest.raises(QualityDataError, match="mos_std"):
        load_tid2013(root)
    with pytest.raises(QualityDataError, match="quality.path"):
        load_tid2013(None)


def test_kadid10k_layout(tmp_path: Path) -> None:
    root = tmp_path / "kadid10k"
    rows = []
    for r in (1, 2, 3):
        _write(root / "images" / f"I{r:02d}.png", r)
        for d in (2, 25):
            name = f"I{r:02d}_{d:02d}_03.png"
            _write(root / "images" / name, r + d)
            rows.append(
                {"dist_img": name, "ref_img": f"I{r:02d}.png", "dmos": r + d / 100, "var": d / 100}
            )
    with (root / "dmos.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, ["dist_img", "ref_img", "dmos", "var"])
        writer.writeheader()
        writer.writerows(rows)
    data = load_kadid10k(root)
    assert len(data) == 6 and data.num_references == 3
    np.testing.assert_allclose(data.scores, [row["dmos"] for row in rows])
    np.testing.assert_allclose(data.stds, np.sqrt([row["var"] for row in rows]))
    assert data.distortions == ["kadid02", "kadid25"] * 3 and set(data.levels) == {3}
    assert data.reference_index.tolist() == [0, 0, 1, 1, 2, 2]
    (root / "images" / "I02_25_03.png").unlink()
    with pytest.raises(QualityDataError, match="I02_25_03.png is missing"):
        load_kadid10k(root)


def test_livemd_layout(tmp_path: Path) -> None:
    savemat = pytest.importorskip("scipy.io").savemat
    root = tmp_path / "LIVEmultidistortiondatabase" / "To_Release"
    expected = []
    for part, sub, refs in (
        ("Part 1", "blurjpeg", ["babygirl", "bikes"]),
        ("Part 2", "blurnoise", ["babygirl"]),
    ):
        names = [f"{refs[0]}.bmp"]  # a pristine image listed among the distorted ones
        for ref in refs:
            _write(root / part / sub / f"{ref}.bmp", len(ref))
            for k in (1, 2):
                name = f"{ref}_{sub}_{k}.bmp"
                _write(root / part / sub / name, k)
                names.append(name)
        cells = np.empty((len(names), 1), dtype=object)
        for i, name in enumerate(names):
            cells[i, 0] = np.array([name])
        dmos = np.arange(len(names), dtype=float)[None] * 10 + (part == "Part 2")
        savemat(root / part / "Imagelists.mat", {"distimgs": cells})
        savemat(root / part / "Scores.mat", {"DMOSscores": dmos})
        expected += [(name, sub, float(v)) for name, v in zip(names, dmos[0], strict=True)]
    data = load_livemd(root.parent)
    assert len(data) == 8 and not data.higher_is_better and data.stds is None
    assert [p.name for p in data.paths] == [name for name, _, _ in expected]
    np.testing.assert_allclose(data.scores, [v for _, _, v in expected])
    assert data.distortions == [sub for _, sub, _ in expected]
    # Three reference images: babygirl in each part is its own file.
    assert data.num_references == 3
    refs = [data.reference_paths[i] for i in data.reference_index]
    assert [r.name for r in refs] == ["babygirl.bmp"] * 3 + ["bikes.bmp"] * 2 + ["babygirl.bmp"] * 3
    assert data.paths[0] == refs[0]  # the listed pristine image is its own reference
    (root / "Part 2" / "blurnoise" / "babygirl_blurnoise_2.bmp").unlink()
    with pytest.raises(QualityDataError, match="babygirl_blurnoise_2.bmp is missing"):
        load_livemd(root)
    assert refs[0].parent.name == "blurjpeg" and refs[-1].parent.name == "blurnoise"


def test_split_by_reference_keeps_contents_apart() -> None:
    groups = np.repeat(np.arange(10), 4)
    splits = split_by_reference(groups, 0.2, 0.3, seed=3)
    sets = {k: set(groups[v]) for k, v in splits.items()}
    assert [len(sets[k]) for k in ("train", "val", "test")] == [5, 2, 3]
    assert not (
        sets["train"] & sets["val"] or sets["train"] & sets["test"] or sets["val"] & sets["test"]
    )
    assert sorted(np.concatenate(list(splits.values()))) == list(range(40))
    with pytest.raises(QualityDataError, match="non-empty train"):
        split_by_reference(np.arange(2), 0.4, 0.4, seed=0)


def test_random_patches_are_crops_of_their_image() -> None:
    images = torch.rand(3, 3, 9, 7)
    crops = random_patches(images, 4, 5, torch.Generator().manual_seed(0))
    assert crops.shape == (15, 3, 4, 4)
    for k, crop in enumerate(crops):
        image = images[k // 5]
        found = any(
            torch.equal(image[:, r : r + 4, c : c + 4], crop) for r in range(6) for c in range(4)
        )
        assert found


def test_proxy_set_is_labelled_by_the_metric_and_cached(tmp_path: Path) -> None:
    import piq

    from introspect.corruptions.transforms import corrupt

    kwargs = {"size": 32, "label": "psnr", "seed": 5, "cache_dir": tmp_path}
    data = build_proxy_set(["camera", "coins"], ["gaussian_noise"], [1, 4], **kwargs)
    assert len(data) == 4 and data.proxy and data.score_name == "proxy psnr"
    assert data.levels.tolist() == [1, 1, 4, 4] and data.reference_index.tolist() == [0, 1, 0, 1]
    distorted, refs = data.images(range(4)), data.references(range(4))
    expected = piq.psnr(distorted, refs, data_range=1.0, reduction="none").double().numpy()
    np.testing.assert_allclose(data.scores, expected, rtol=1e-6)
    # The distorted images are the corruption generator's output, quantized to 8 bits.
    again = corrupt(refs[:2], "gaussian_noise", 4, seed=5 + 4)
    torch.testing.assert_close(distorted[2:], (again * 255).round() / 255)
    assert data.scores[2:].mean() < data.scores[:2].mean()  # severity 4 is worse
    cached = build_proxy_set(["camera", "coins"], ["gaussian_noise"], [1, 4], **kwargs)
    assert len(list(tmp_path.glob("proxy-*.npz"))) == 1
    np.testing.assert_array_equal(cached.scores, data.scores)
    assert torch.equal(cached.pixels, data.pixels)
    with pytest.raises(QualityDataError, match="no sample image"):
        build_proxy_set(["nope"], ["gaussian_noise"], [1], size=32, label="psnr")


def test_contrast_cam_for_regression_matches_captum() -> None:
    captum_attr = pytest.importorskip("captum.attr")
    from introspect.explain.core import upsample
    from introspect.explain.quality_maps import quality_contrast_cam, quality_gradcam

    torch.manual_seed(1)
    model = Scored().eval()
    images = torch.rand(4, 3, 10, 10)
    for q in (0.2, 1.5):
        cam = captum_attr.LayerGradCam(lambda x, q=q: (model(x)[:, 0] - q) ** 2, model.conv)
        reference = upsample(cam.attribute(images, relu_attributions=True)[:, 0], (10, 10))
        ours = quality_contrast_cam(model, images, q, layer="conv", normalize=False)
        torch.testing.assert_close(ours, reference.detach())
    why = captum_attr.LayerGradCam(lambda x: model(x)[:, 0], model.conv)
    reference = upsample(why.attribute(images, relu_attributions=True)[:, 0], (10, 10))
    torch.testing.assert_close(quality_gradcam(model, images, "conv", False), reference.detach())


TINY = [
    "experiment=iqa_proxy",
    "quality.references=[camera,coins,moon,page]",
    "quality.distortions=[gaussian_noise,contrast]",
    "quality.severities=[1,3,5]",
    "quality.image_size=32",
    "quality.label=psnr",
    "quality.baselines=[ssim,gmsd]",
    "quality.val_fraction=0.25",
    "quality.test_fraction=0.25",
    "quality.train.epochs=2",
    "quality.train.patch_size=16",
    "stage2.head.epochs=3",
]


@pytest.mark.slow
def test_proxy_run_end_to_end_and_its_explanation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import evaluate
    import train

    run_dir = tmp_path / "run"
    args = [*TINY, f"run.dir={run_dir}", f"quality.cache_dir={tmp_path / 'cache'}"]
    assert train.main(args) == 0
    results = json.loads((run_dir / "results.json").read_text())
    assert set(results["models"]) == {"feedforward", "introspective", "control"}
    assert set(results["baselines"]) == {"ssim", "gmsd"}
    assert results["data"]["proxy"] and results["data"]["images"] == {
        "train": 12,
        "val": 6,
        "test": 6,
    }
    for scores in [*results["models"].values(), *results["baselines"].values()]:
        assert 0 <= scores["or"] <= 1 and scores["rmse"] >= 0
        assert all(0 <= scores[m] <= 1 for m in ("plcc", "srcc", "krcc"))
    table = (run_dir / "table.md").read_text()
    assert "proxy (PSNR)" in table and "no human opinion scores" in table
    assert "| FF | INT | CTL |" in table and table.count("| proxy (PSNR) |") == 5
    assert json.loads((run_dir / "status.json").read_text())["state"] == "complete"
    assert (run_dir / "scatter.png").is_file()

    capsys.readouterr()
    assert evaluate.main(["explain", f"run={run_dir}", "n=2"]) == 0
    out = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert out == run_dir / "explanations" / "quality.png"
    with Image.open(out) as image:
        image.verify()
    assert evaluate.main(["explain", f"run={run_dir}", "figure=paradigms"]) == 2
    assert "quality run" in capsys.readouterr().err


@pytest.mark.slow
def test_quality_config_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import train

    code = train.main([*TINY, "quality.baselines=[psnr]", f"run.dir={tmp_path / 'a'}"])
    assert code == 2 and "scores the proxy set" in capsys.readouterr().err
    code = train.main([*TINY, "quality.database=tid2013", f"run.dir={tmp_path / 'b'}"])
    assert code == 2 and "quality.path" in capsys.readouterr().err
    code = train.main([*TINY, "quality.distortions=[fogg]", f"run.dir={tmp_path / 'c'}"])
    assert code == 2 and "quality.distortions" in capsys.readouterr().err
    assert not any((tmp_path / n).exists() for n in "abc")
