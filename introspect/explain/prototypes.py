"""The "this looks like that" figure of a ProtoPNet: prototypes, their sources and the points."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch.utils.data import Dataset

from introspect.backbones.protopnet import ProtoPNet, similarity
from introspect.explain.core import ExplanationError, check_images
from introspect.explain.figure import display_image
from introspect.models.protopnet import high_activation_box, upsample_map


@torch.no_grad()
def prototype_evidence(backbone: Any, images: torch.Tensor, k: int = 3) -> list[dict[str, Any]]:
    """Per image: predicted class ``P``, per-class totals (the logits), and the ``k``
    prototypes contributing most points to ``P``: index, similarity, class weight, points
    (similarity x weight), the box on the image and the upsampled similarity map."""
    net = getattr(backbone, "net", None)
    if not isinstance(net, ProtoPNet):
        raise ExplanationError(
            "kind=prototypes needs a protopnet backbone (backbone.name=protopnet)"
        )
    check_images(images)
    was_training = backbone.training
    backbone.eval()
    out = net.details(backbone.normalize(images))
    backbone.train(was_training)
    weight = net.last_layer.weight
    size = images.shape[-2:]
    evidence = []
    for i in range(len(images)):
        logits = out["logits"][i]
        pred = int(logits.argmax())
        points = out["similarities"][i] * weight[pred]
        top = points.topk(min(k, net.num_prototypes)).indices.tolist()
        rows = []
        for j in top:
            sim_map = similarity(out["distances"][i : i + 1, j : j + 1], net.epsilon)
            rows.append(
                {
                    "prototype": j,
                    "prototype_class": int(net.prototype_class[j]),
                    "similarity": float(out["similarities"][i, j]),
                    "weight": float(weight[pred, j]),
                    "points": float(points[j]),
                    "box": high_activation_box(sim_map, size)[0],
                    "map": upsample_map(sim_map, size)[0].cpu(),
                }
            )
        evidence.append({"predicted": pred, "totals": logits.cpu().tolist(), "top": rows})
    return evidence


def _box(ax: Any, box: Sequence[int], color: str = "yellow") -> None:
    y0, y1, x0, x1 = box
    ax.add_patch(
        Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor=color, lw=1.5)
    )


def prototype_figure(
    backbone: Any,
    images: torch.Tensor,
    train_set: Dataset,
    class_names: Sequence[str],
    path: str | os.PathLike[str],
    *,
    k: int = 3,
    labels: Sequence[int] | None = None,
) -> Path:
    """Write the "this looks like that" PNG for ``images`` and return its path.

    Per image a block of ``k`` rows (the prototypes giving the predicted class the most
    points), columns: the image with the box of the part that looks like the prototype, the
    prototype (its patch in the source training image), the source training image
    (``train_set[push_image]``, the run's un-augmented train split) with its box, the
    activation map on the image, and ``similarity x class weight = points``. The block's
    title gives the true and predicted class and the per-class totals of the top classes.
    """
    net = getattr(backbone, "net", None)
    if isinstance(net, ProtoPNet) and bool((net.push_image < 0).any()):
        raise ExplanationError("the prototypes were never pushed; train the run to the end first")
    evidence = prototype_evidence(backbone, images, k)
    assert isinstance(net, ProtoPNet)
    rows = sum(len(e["top"]) for e in evidence)
    fig = Figure(figsize=(11, 2.0 * rows + 0.6 * len(evidence)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 5, squeeze=False)
    r = 0
    for i, e in enumerate(evidence):
        image = display_image(images[i])
        order = np.argsort(e["totals"])[::-1][:3]
        totals = "\n".join(f"{class_names[c]} {e['totals'][c]:.2f}" for c in order)
        truth = f"true {class_names[labels[i]]}" if labels is not None else ""
        for n, row in enumerate(e["top"]):
            j = row["prototype"]
            src_index = int(net.push_image[j])
            src = display_image(train_set[src_index][0])
            y0, y1, x0, x1 = net.push_box[j].tolist()
            ax = axes[r]
            ax[0].imshow(image, cmap="gray")
            _box(ax[0], row["box"])
            ax[1].imshow(src[y0:y1, x0:x1], cmap="gray")
            ax[2].imshow(src, cmap="gray")
            _box(ax[2], (y0, y1, x0, x1))
            ax[3].imshow(image, cmap="gray")
            ax[3].imshow(row["map"].numpy(), cmap="jet", alpha=0.5)
            ax[4].axis("off")
            ax[4].text(
                0.0,
                0.4,
                f"{row['similarity']:.3f} x {row['weight']:.3f}\n= {row['points']:.3f} points\n"
                f"(prototype {j}, class {class_names[row['prototype_class']]})",
                fontsize=9,
                va="center",
            )
            for a in ax[:4]:
                a.set_xticks([])
                a.set_yticks([])
            if n == 0:
                ax[0].set_title(
                    f"image {i}: {truth}\npredicted {class_names[e['predicted']]}",
                    fontsize=8,
                    loc="left",
                )
                ax[4].text(0.0, 1.0, f"class totals:\n{totals}", fontsize=8, va="top")
                ax[1].set_title("prototype", fontsize=8)
                ax[2].set_title(f"source: train #{src_index}", fontsize=8)
                ax[3].set_title("activation map", fontsize=8)
                ax[4].set_title("similarity x weight", fontsize=8)
            else:
                ax[2].set_title(f"train #{src_index}", fontsize=8)
            r += 1
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out
