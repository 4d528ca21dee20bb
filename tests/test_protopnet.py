"""ProtoPNet: similarity, last-layer init, losses, phases, push, checkpoints, introspection,
the stage-1 dispatch of a run and the "this looks like that" figure."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from introspect.backbones import BackboneError, load_backbone
from introspect.backbones.protopnet import ProtoPNet
from introspect.config import load_config
from introspect.gradients.extract import extract
from introspect.models.protopnet import (
    cluster_separation,
    protopnet_loss,
    push_prototypes,
    save_checkpoint,
    train_phase,
    wrong_class_l1,
)

SETTINGS = {
    "warm_lr": 1e-2,
    "trunk_lr": 1e-2,
    "add_on_lr": 1e-2,
    "prototype_lr": 1e-2,
    "last_layer_lr": 1e-2,
    "weight_decay": 0.0,
    "clst": 0.8,
    "sep": 0.08,
    "l1": 1e-4,
}


def _tiny(classes: int = 3, per_class: int = 2, dim: int = 6, seed: int = 0):
    torch.manual_seed(seed)
    return load_backbone(
        "protopnet",
        num_classes=classes,
        input_size=(3, 8, 8),
        kwargs={
            "trunk": "small_cnn",
            "prototypes_per_class": per_class,
            "prototype_dim": dim,
            "trunk_kwargs": {"width": 4},
        },
    )


def _data(n: int = 18, classes: int = 3, seed: int = 1) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.rand(n, 3, 8, 8, generator=g), torch.arange(n) % classes)


def test_forward_is_the_similarity_of_the_brute_force_minimum_distance() -> None:
    backbone = _tiny()
    net = backbone.net
    x = torch.rand(4, 3, 8, 8)
    out = net.details(backbone.normalize(x))
    z = out["features"]  # (B, C, H, W)
    patches = z.permute(0, 2, 3, 1).reshape(len(x), -1, z.shape[1])  # (B, HW, C)
    protos = net.prototype_vectors[:, :, 0, 0]  # (P, C)
    brute = ((patches[:, :, None, :] - protos[None, None]) ** 2).sum(-1)  # (B, HW, P)
    min_d = brute.min(dim=1).values
    torch.testing.assert_close(out["min_distances"], min_d, atol=1e-5, rtol=1e-5)
    sim = torch.log((min_d + 1) / (min_d + 1e-4))
    torch.testing.assert_close(out["similarities"], sim, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(backbone(x), sim @ net.last_layer.weight.T, atol=1e-4, rtol=1e-4)
    assert backbone.head is net.last_layer and backbone.feature_dim == 6


def test_last_layer_starts_with_class_connections() -> None:
    net = _tiny(classes=3, per_class=2).net
    expected = torch.tensor(
        [[1.0, 1.0, -0.5, -0.5, -0.5, -0.5],
         [-0.5, -0.5, 1.0, 1.0, -0.5, -0.5],
         [-0.5, -0.5, -0.5, -0.5, 1.0, 1.0]]
    )  # fmt: skip
    assert torch.equal(net.last_layer.weight.data, expected)
    assert net.last_layer.bias is None
    assert wrong_class_l1(net).item() == pytest.approx(0.5 * 12)


def test_losses_equal_a_hand_computation() -> None:
    # 2 classes x 2 prototypes; image 0 is class 0, image 1 class 1.
    min_d = torch.tensor([[0.5, 2.0, 1.0, 3.0], [4.0, 0.25, 6.0, 5.0]])
    labels = torch.tensor([0, 1])
    proto_class = torch.tensor([0, 0, 1, 1])
    cluster, separation = cluster_separation(min_d, labels, proto_class)
    # cluster: own-class minima 0.5 (image 0: protos 0,1) and 5.0 (image 1: protos 2,3)
    assert cluster.item() == pytest.approx((0.5 + 5.0) / 2)
    # separation: minus other-class minima 1.0 (image 0: protos 2,3), 0.25 (image 1: 0,1)
    assert separation.item() == pytest.approx(-(1.0 + 0.25) / 2)


def test_total_loss_is_ce_plus_weighted_cluster_and_separation() -> None:
    backbone = _tiny()
    net = backbone.net
    x, y = torch.rand(5, 3, 8, 8), torch.tensor([0, 1, 2, 0, 1])
    xn = backbone.normalize(x)
    total, terms = protopnet_loss(net, xn, y, clst=0.8, sep=0.08, l1=1e-2)
    d = net.details(xn)["min_distances"]
    own = y[:, None] == net.prototype_class[None]
    clst = torch.stack([d[i][own[i]].min() for i in range(5)]).mean()
    sep = -torch.stack([d[i][~own[i]].min() for i in range(5)]).mean()
    ce = F.cross_entropy(backbone(x), y)
    l1 = sum(
        abs(float(net.last_layer.weight[c, j].detach()))
        for c in range(3)
        for j in range(6)
        if int(net.prototype_class[j]) != c
    )
    expected = ce + 0.8 * clst + 0.08 * sep + 1e-2 * l1
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    assert terms["l1"].item() == pytest.approx(l1, rel=1e-6)


def test_phases_train_only_their_parameters() -> None:
    backbone = _tiny()
    net = backbone.net
    loader = torch.utils.data.DataLoader(_data(), batch_size=6, shuffle=True)
    snap = {k: v.clone() for k, v in net.state_dict().items()}

    def changed(prefix: str) -> bool:
        now = net.state_dict()
        return any(
            not torch.equal(now[k], snap[k])
            for k in snap
            if k.startswith(prefix) and now[k].is_floating_point() and "running" not in k
        )

    cpu = torch.device("cpu")
    train_phase(backbone, loader, "warm", 1, SETTINGS, cpu)
    assert changed("add_on") and changed("prototype_vectors")
    assert not changed("trunk") and not changed("last_layer")
    snap = {k: v.clone() for k, v in net.state_dict().items()}
    train_phase(backbone, loader, "joint", 1, SETTINGS, cpu)
    assert changed("trunk") and changed("add_on") and not changed("last_layer")
    snap = {k: v.clone() for k, v in net.state_dict().items()}
    history = train_phase(backbone, loader, "last_layer", 2, SETTINGS, cpu)
    assert changed("last_layer") and not changed("trunk") and not changed("prototype_vectors")
    assert len(history) == 2 and {"ce", "cluster", "separation", "l1", "acc"} <= set(history[0])
    assert all(p.requires_grad for p in net.parameters())


def test_push_makes_every_prototype_the_nearest_training_patch_of_its_class() -> None:
    backbone = _tiny().eval()
    net = backbone.net
    data = _data()
    before = net.prototype_vectors.detach().clone()
    push_prototypes(backbone, data, batch_size=len(data))
    images, labels = data.tensors
    with torch.no_grad():  # the same single batch as the push: bit-identical features
        z = net.feature_map(backbone.normalize(images))
    for j in range(net.num_prototypes):
        i, (r, c) = int(net.push_image[j]), net.push_location[j].tolist()
        assert int(labels[i]) == int(net.prototype_class[j])
        # exactly the patch feature of that image (bitwise), and numerically the same when
        # recomputed on that image alone
        assert torch.equal(net.prototype_vectors[j, :, 0, 0].detach(), z[i, :, r, c])
        with torch.no_grad():
            alone = net.feature_map(backbone.normalize(images[i : i + 1]))[0, :, r, c]
        torch.testing.assert_close(net.prototype_vectors[j, :, 0, 0].detach(), alone)
        # and the nearest patch to the old prototype among images of its class
        own = z[labels == labels[i]]
        dist = ((own - before[j][None]) ** 2).sum(1)
        chosen = ((z[i, :, r, c] - before[j, :, 0, 0]) ** 2).sum()
        assert chosen.item() == pytest.approx(dist.min().item(), rel=1e-5, abs=1e-6)
        y0, y1, x0, x1 = net.push_box[j].tolist()
        assert 0 <= y0 < y1 <= 8 and 0 <= x0 < x1 <= 8


def test_checkpoint_loads_weights_only_with_the_push_provenance(tmp_path: Path) -> None:
    backbone = _tiny()
    push_prototypes(backbone, _data(), batch_size=7)
    save_checkpoint(backbone, tmp_path / "p.ckpt", phase="push")
    state = torch.load(tmp_path / "p.ckpt", weights_only=True)
    assert state["phase"] == "push"
    torch.manual_seed(5)
    again = load_backbone(
        "protopnet",
        tmp_path / "p.ckpt",
        num_classes=3,
        input_size=(3, 8, 8),
        kwargs={
            "trunk": "small_cnn",
            "prototypes_per_class": 2,
            "prototype_dim": 6,
            "trunk_kwargs": {"width": 4},
        },
    )
    for name in ("prototype_vectors", "push_image", "push_location", "push_box"):
        assert torch.equal(getattr(again.net, name), getattr(backbone.net, name))
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(again.eval()(x), backbone.eval()(x))


def test_introspective_features_at_the_last_layer_equal_autograd() -> None:
    backbone = _tiny().eval()
    x = torch.rand(3, 3, 8, 8)
    feats = extract(backbone, x)  # all-ones CE, L2-normalized, last layer
    for i in range(3):
        backbone.zero_grad()
        logits = backbone(x[i : i + 1])
        loss = F.cross_entropy(logits, torch.ones_like(logits))
        (grad,) = torch.autograd.grad(loss, backbone.net.last_layer.weight)
        expected = grad.flatten() / grad.norm()
        torch.testing.assert_close(feats[i], expected, atol=1e-5, rtol=1e-4)


def test_bad_trunk_or_size_is_a_one_line_error() -> None:
    with pytest.raises(BackboneError, match="convolutional trunk"):
        load_backbone("protopnet", num_classes=10, kwargs={"trunk": "robust_cnn_a"})
    with pytest.raises(BackboneError, match="prototypes_per_class must be a positive"):
        load_backbone("protopnet", kwargs={"prototypes_per_class": 0})
    for trunk in ("cifar_resnet20", "resnet18"):
        kwargs = {"trunk": trunk, "prototypes_per_class": 1, "prototype_dim": 8}
        net = load_backbone("protopnet", num_classes=4, kwargs=kwargs).net
        assert isinstance(net, ProtoPNet)
        assert net.eval()(torch.rand(2, 3, 32, 32)).shape == (2, 4)


RUN_OVERRIDES = [
    "experiment=protopnet_digits",
    "data=synthetic",
    "data.num_samples=90",
    "data.image_size=8",
    "data.batch_size=16",
    "data.num_classes=3",
    "backbone.kwargs.prototypes_per_class=2",
    "backbone.kwargs.prototype_dim=8",
    "backbone.kwargs.trunk_kwargs={width: 4}",
    "stage1.protopnet.warm_epochs=1",
    "stage1.protopnet.joint_epochs=2",
    "stage1.protopnet.last_layer_epochs=1",
    "stage2.head.epochs=1",
    "stage2.head.hidden=[8]",
    "eval.corruptions=[contrast]",
    "eval.severities=[5]",
    "trainer.enable_progress_bar=false",
]


@pytest.fixture(scope="module")
def protopnet_run(tmp_path_factory: pytest.TempPathFactory):
    from introspect.jobs.train import run

    tmp = tmp_path_factory.mktemp("protopnet")
    cfg = load_config(
        [
            *RUN_OVERRIDES,
            f"run.dir={tmp / 'run'}",
            f"stage2.cache_dir={tmp / 'cache'}",
        ]
    )
    return cfg, Path(cfg.run.dir), run(cfg)


def test_a_protopnet_run_trains_the_phases_and_introspects(protopnet_run) -> None:
    cfg, run_dir, results = protopnet_run
    folder = run_dir / "checkpoints"
    for phase in ("warm", "joint", "push", "last_layer"):
        assert torch.load(folder / f"protopnet-{phase}.ckpt", weights_only=True)["phase"] == phase
    best = torch.load(folder / "stage1-best.ckpt", weights_only=True)["state_dict"]
    assert int(best["backbone.net.push_image"].min()) >= 0  # pushed
    assert (run_dir / "protopnet.json").is_file()
    assert "clean" in results["splits"] and "contrast/5" in results["splits"]
    clean = results["splits"]["clean"]
    assert {"feedforward", "introspective", "control"} <= set(clean)
    assert all(0 <= clean[h]["acc"] <= 1 for h in ("feedforward", "introspective", "control"))


def test_explain_prototypes_draws_the_figure(protopnet_run, capsys) -> None:
    from introspect.cli.explain import explain_main

    _, run_dir, _ = protopnet_run
    out = run_dir / "p.png"
    assert explain_main([f"run={run_dir}", "kind=prototypes", "n=2", "k=2", f"out={out}"]) == 0
    assert out.stat().st_size > 0 and capsys.readouterr().out.strip() == str(out)
    assert explain_main([f"run={run_dir}", "kind=nope"]) == 2
    assert "kind must be one of" in capsys.readouterr().err


def test_prototype_evidence_points_add_up_to_the_logits() -> None:
    from introspect.explain.prototypes import prototype_evidence

    backbone = _tiny(per_class=2)
    x = torch.rand(2, 3, 8, 8)
    evidence = prototype_evidence(backbone, x, k=6)  # all prototypes
    logits = backbone.eval()(x)
    for i, e in enumerate(evidence):
        total = sum(r["points"] for r in e["top"])
        assert total == pytest.approx(float(logits[i, e["predicted"]]), rel=1e-5)
        for r in e["top"]:
            assert r["points"] == pytest.approx(r["similarity"] * r["weight"], rel=1e-6)
            assert not math.isnan(r["points"])


def test_a_run_killed_after_the_push_resumes_with_the_last_layer_phase(
    protopnet_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from introspect.jobs.train import run
    from introspect.models import protopnet as phases

    _, ref_dir, _ = protopnet_run
    overrides = [*RUN_OVERRIDES, f"run.dir={tmp_path / 'run'}", f"stage2.cache_dir={tmp_path}"]
    ran: list[str] = []
    real_train, real_push = phases.train_phase, phases.push_prototypes

    def killed_in_last_layer(backbone, loader, phase, *args, **kwargs):
        ran.append(phase)
        if phase == "last_layer":
            raise KeyboardInterrupt("killed during the last-layer phase")
        return real_train(backbone, loader, phase, *args, **kwargs)

    def push(*args, **kwargs):
        ran.append("push")
        return real_push(*args, **kwargs)

    monkeypatch.setattr(phases, "train_phase", killed_in_last_layer)
    monkeypatch.setattr(phases, "push_prototypes", push)
    with pytest.raises(KeyboardInterrupt):
        run(load_config(overrides))
    assert ran == ["warm", "joint", "push", "last_layer"]
    folder = tmp_path / "run" / "checkpoints"
    assert [p for p, _ in phases.finished_phases(folder)] == ["warm", "joint", "push"]
    assert not (folder / "stage1-best.ckpt").exists()

    ran.clear()
    monkeypatch.setattr(phases, "train_phase", lambda b, loader, phase, *a, **k: (
        ran.append(phase), real_train(b, loader, phase, *a, **k))[1])  # fmt: skip
    results = run(load_config([*overrides, "run.resume=true"]))
    assert ran == ["last_layer"]  # warm-up, joint and push were not run again
    # The final model is bit-identical to the uninterrupted run's with the same seed.
    got = torch.load(folder / "stage1-best.ckpt", weights_only=True)["state_dict"]
    ref = torch.load(ref_dir / "checkpoints" / "stage1-best.ckpt", weights_only=True)
    assert got.keys() == ref["state_dict"].keys()
    for key, value in ref["state_dict"].items():
        assert torch.equal(got[key], value), key
    records = json.loads((tmp_path / "run" / "protopnet.json").read_text())
    ref_records = json.loads((ref_dir / "protopnet.json").read_text())
    for phase in ("warm", "joint", "push", "last_layer"):
        assert records[phase].get("restored", False) == (phase != "last_layer")
        assert records[phase]["history"] == ref_records[phase]["history"]
        assert records[phase]["val_acc"] == ref_records[phase]["val_acc"]
    assert "clean" in results["splits"]


def test_resume_stops_at_the_first_missing_or_incomplete_phase_checkpoint(
    tmp_path: Path,
) -> None:
    from introspect.models.protopnet import finished_phases

    backbone = _tiny()
    rng = {"cpu": torch.get_rng_state()}
    for phase in ("warm", "joint", "last_layer"):  # no push checkpoint
        save_checkpoint(
            backbone, tmp_path / f"protopnet-{phase}.ckpt", phase=phase, record={}, rng=rng, step=1
        )
    assert [p for p, _ in finished_phases(tmp_path)] == ["warm", "joint"]
    save_checkpoint(backbone, tmp_path / "protopnet-joint.ckpt", phase="joint")  # older format
    assert [p for p, _ in finished_phases(tmp_path)] == ["warm"]
    assert finished_phases(tmp_path / "nothing") == []


def test_a_run_killed_after_a_joint_epoch_resumes_after_that_epoch(
    protopnet_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from introspect.jobs.train import run
    from introspect.models import protopnet as phases

    _, ref_dir, _ = protopnet_run
    overrides = [*RUN_OVERRIDES, f"run.dir={tmp_path / 'run'}", f"stage2.cache_dir={tmp_path}"]
    folder = tmp_path / "run" / "checkpoints"
    real_save = phases.save_checkpoint

    def killed_after_the_first_joint_epoch(backbone, path, **info):
        real_save(backbone, path, **info)
        if path.name == "protopnet-joint-epoch.ckpt":
            raise KeyboardInterrupt("killed after joint epoch 1")

    monkeypatch.setattr(phases, "save_checkpoint", killed_after_the_first_joint_epoch)
    with pytest.raises(KeyboardInterrupt):
        run(load_config(overrides))
    assert [p for p, _ in phases.finished_phases(folder)] == ["warm"]
    monkeypatch.setattr(phases, "save_checkpoint", real_save)

    epochs_run: list[tuple[str, int]] = []
    real_loss = phases.protopnet_loss

    def counting_loss(net, x, labels, **kwargs):
        epochs_run.append((net.training, kwargs["l1"]))
        return real_loss(net, x, labels, **kwargs)

    monkeypatch.setattr(phases, "protopnet_loss", counting_loss)
    run(load_config([*overrides, "run.resume=true"]))
    # One joint epoch and one last-layer epoch of 4 batches each (60 images, batch 16): the
    # warm-up and the first joint epoch were not run again.
    assert [l1 > 0 for _, l1 in epochs_run] == [False] * 4 + [True] * 4
    assert not (folder / "protopnet-joint-epoch.ckpt").exists()
    got = torch.load(folder / "stage1-best.ckpt", weights_only=True)["state_dict"]
    ref = torch.load(ref_dir / "checkpoints" / "stage1-best.ckpt", weights_only=True)
    for key, value in ref["state_dict"].items():
        assert torch.equal(got[key], value), key
    records = json.loads((tmp_path / "run" / "protopnet.json").read_text())
    ref_records = json.loads((ref_dir / "protopnet.json").read_text())
    assert records["warm"]["restored"] and records["joint"]["resumed_at_epoch"] == 1
    assert records["joint"]["history"] == ref_records["joint"]["history"]
