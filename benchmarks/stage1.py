"""Stage-1 training speed: images/s of a training epoch of ResNet-18 (torchvision, CIFAR stem)
and CIFAR ResNet-20, per Table-1 recipe, and the time to a target accuracy on real data.

Throughput (``--rounds`` rounds of ``--steps`` timed SGD steps after ``--warmup``, the cases
of a network taking turns within each round, median over rounds; batches of ``--batch-size`` 32-px
images held on the device, crop + flip applied there by ``data.device.DeviceBatches``; on
CUDA with bf16 autocast and channels-last unless ``--fp32``/``--no-channels-last``), per
network and case:

- ``standard``: cross-entropy step on crop + flip;
- ``noise``: plus Gaussian noise (on the device);
- ``adversarial``: PGD-``--pgd-steps`` images, then the step;
- ``denoising``: feature-denoising blocks after every stage (or ``--denoise-stages``),
  PGD-``--pgd-steps`` as above;
- ``simclr``: NT-Xent step on two views per image (views drawn beforehand: the step only);
- ``augmix`` / ``simclr views``: the per-image CPU augmentation alone (images/s, one process),
  which stage 1 adds to the step on the CPU path.

The epoch column is 50,000 / (images/s). ``--experiment NAME --target-acc A`` then trains the
experiment's backbone (recipe ``standard``) on its real training split, held on the device, for
at most ``--max-epochs`` epochs (SGD, Nesterov, lr ``--lr``, cosine), evaluating on its
validation split after every epoch, and prints when it first reaches accuracy ``A``. Usage::

    python benchmarks/stage1.py --threads 2 --steps 20            # CPU throughput
    python benchmarks/stage1.py --steps 50 --nets resnet18         # GPU
    python benchmarks/stage1.py --nets resnet18 --steps 0 --experiment table1_standard \
        --target-acc 0.9 --max-epochs 30 --batch-size 512 --lr 0.2
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from introspect.attacks import pgd
from introspect.backbones import Backbone, load_backbone
from introspect.backbones.denoising import add_denoising_blocks
from introspect.data.augment import AugMixFloat
from introspect.data.device import DeviceBatches, load_split
from introspect.data.views import SimCLRAugment
from introspect.models.contrastive import ProjectionHead, nt_xent

NETS = {"resnet18": ("resnet18", True), "resnet20": ("cifar_resnet20", False)}
CASES = ("standard", "noise", "adversarial", "denoising", "simclr")
EPOCH = 50_000


def build(
    net: str, device: torch.device, channels_last: bool, denoise: list[str] | None = None
) -> Backbone:
    """A freshly initialised network ``net`` (a key of NETS) on ``device``, with denoising
    blocks after the stages ``denoise`` (``[]``: all)."""
    name, stem = NETS[net]
    backbone = load_backbone(name, num_classes=10, cifar_stem=stem, input_size=(3, 32, 32))
    if denoise is not None:
        add_denoising_blocks(backbone.net, torch.zeros(1, 3, 32, 32), stages=denoise or None)
    backbone = backbone.to(device)
    if channels_last:
        backbone = backbone.to(memory_format=torch.channels_last)
    return backbone


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when asked, else nothing."""
    if bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def prepare(
    net: str, case: str, args: argparse.Namespace, device: torch.device
) -> Callable[[], None]:
    """One training step of ``net`` under ``case`` on the next device-held batch."""
    torch.manual_seed(0)
    cl = args.channels_last and device.type == "cuda"
    stages = [s for s in args.denoise_stages.split(",") if s]
    model = build(net, device, cl, denoise=stages if case == "denoising" else None).train()
    params = list(model.parameters())
    projection = None
    if case == "simclr":
        projection = ProjectionHead(model.feature_dim, 128).to(device)
        params += list(projection.parameters())
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    b = args.batch_size
    images = torch.rand(2 * b, 3, 32, 32, device=device)
    labels = torch.randint(0, 10, (len(images),), device=device)
    augment = ["standard", "gaussian_noise"] if case == "noise" else ["standard"]
    batches = DeviceBatches(images, labels, batch_size=b, augment=augment)
    it = iter(batches)

    def step() -> None:
        nonlocal it
        batch = next(it, None)
        if batch is None:
            it = iter(batches)
            batch = next(it)
        x, y = batch
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        if case in ("adversarial", "denoising"):
            model.eval()
            with autocast(device, args.bf16):
                x = pgd(model, x, y, eps=8 / 255, alpha=2 / 255, steps=args.pgd_steps,
                        generator=torch.default_generator)  # fmt: skip
            model.train()
        with autocast(device, args.bf16):
            if case == "simclr":
                assert projection is not None
                x2 = batches.augment_batch(x)
                _, h = model.forward_features(torch.cat([x, x2]))
                z = projection(h)
                loss = nt_xent(z[:b], z[b:], 0.5)
            else:
                loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def throughput(
    nets: list[str], cases: list[str], args: argparse.Namespace, device: torch.device
) -> dict[tuple[str, str], float]:
    """Training images/s of every (net, case): ``args.rounds`` rounds of ``args.steps`` timed
    steps, the cases taking turns within a round (so that load on a shared machine hits all
    alike); the median over rounds."""
    steps = {(n, c): prepare(n, c, args, device) for n in nets for c in cases}
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    rates: dict[tuple[str, str], list[float]] = {k: [] for k in steps}
    for _ in range(args.rounds):
        for key, step in steps.items():
            sync(device)
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            sync(device)
            rates[key].append(args.steps * args.batch_size / (time.perf_counter() - start))
    return {k: statistics.median(v) for k, v in rates.items()}


def augmentation_rate(make: Callable[[], Callable[[torch.Tensor], torch.Tensor]], n: int) -> float:
    """Images/s of a per-image CPU augmentation on ``n`` random 32-px images."""
    torch.manual_seed(0)
    aug = make()
    images = torch.rand(n, 3, 32, 32)
    start = time.perf_counter()
    for x in images:
        aug(x)
    return n / (time.perf_counter() - start)


def time_to_accuracy(args: argparse.Namespace, device: torch.device) -> None:
    """Train the experiment's network on its real data held on the device until it reaches
    ``args.target_acc`` on the validation split (or ``args.max_epochs``)."""
    from introspect.config import load_config
    from introspect.jobs.settings import train_settings
    from introspect.stages.stage1 import build_data

    cfg = load_config([f"experiment={args.experiment}", "stage1.recipe=standard"])
    start = time.perf_counter()
    dm = build_data(train_settings(cfg).stage1)
    x_train, y_train = load_split(dm.split("train"), device)
    x_val, y_val = load_split(dm.split("val"), device)
    print(f"data: {len(y_train)} training / {len(y_val)} validation images on {device} "
          f"in {time.perf_counter() - start:.1f} s")  # fmt: skip
    torch.manual_seed(0)
    net = next(k for k, (name, _) in NETS.items() if name == cfg.backbone.name)
    cl = args.channels_last and device.type == "cuda"
    model = build(net, device, cl)
    batches = DeviceBatches(x_train, y_train, batch_size=args.batch_size, augment=["standard"])
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True,
                          weight_decay=5e-4)  # fmt: skip
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.max_epochs * len(batches))
    sync(device)
    start = time.perf_counter()
    for epoch in range(1, args.max_epochs + 1):
        model.train()
        for x, y in batches:
            if cl:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, args.bf16):
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad(), autocast(device, args.bf16):
            correct = sum(
                int((model(x_val[i : i + 1024]).argmax(1) == y_val[i : i + 1024]).sum())
                for i in range(0, len(y_val), 1024)
            )
        sync(device)
        acc = correct / len(y_val)
        elapsed = time.perf_counter() - start
        print(f"epoch {epoch}: val acc {acc:.4f}, {elapsed:.1f} s")
        if acc >= args.target_acc:
            print(f"target {args.target_acc} reached after {epoch} epochs, {elapsed:.1f} s")
            return
    print(f"target {args.target_acc} not reached in {args.max_epochs} epochs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--nets", default="resnet20,resnet18")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--pgd-steps", type=int, default=2)
    parser.add_argument("--denoise-stages", default="", help="e.g. layer2,layer3 (default all)")
    parser.add_argument("--fp32", dest="bf16", action="store_false")
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    parser.add_argument("--augment-images", type=int, default=200)
    parser.add_argument("--experiment", default=None)
    parser.add_argument("--target-acc", type=float, default=0.9)
    parser.add_argument("--max-epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=0.1)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    cuda = device.type == "cuda"
    where = torch.cuda.get_device_name(device) if cuda else f"{torch.get_num_threads()} threads"
    print(
        f"torch {torch.__version__}, device {device} ({where}), batch {args.batch_size}, "
        f"bf16 {args.bf16 and cuda}, channels-last {args.channels_last and cuda}, "
        f"PGD-{args.pgd_steps}"
    )
    print("| network | case | images/s | s per 50,000-image epoch | time per image vs standard |")
    print("|---|---|---:|---:|---:|")
    for net in args.nets.split(",") if args.steps > 0 else []:
        rates = throughput([net], args.cases.split(","), args, device)
        base = rates.get((net, "standard"))
        for (_, case), ips in rates.items():
            rel = f"{base / ips:.2f}x" if base else "–"
            print(f"| {net} | {case} | {ips:.0f} | {EPOCH / ips:.0f} | {rel} |", flush=True)
    if args.augment_images > 0:
        n = args.augment_images
        for label, make in (("augmix (per image, CPU)", lambda: AugMixFloat(3)),
                            ("simclr views (per view, CPU)", SimCLRAugment)):  # fmt: skip
            ips = augmentation_rate(make, n)
            print(f"| – | {label} | {ips:.0f} | {EPOCH / ips:.0f} | |", flush=True)
    if args.experiment:
        time_to_accuracy(args, device)


if __name__ == "__main__":
    main()
