"""Multi-process (DDP) runs on the CPU: exact evaluation shards, the whole pipeline on two
processes started as ``python train.py trainer=ddp_cpu``, resumable sharded extraction, what
the other process does when one stops, and active learning's pool scored once across two."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy as TrainerDDPStrategy
from PIL import Image

from introspect.config import ConfigError, load_config, load_run_config
from introspect.data.samplers import ContiguousSampler
from introspect.gradients.cache import FeatureCache
from introspect.jobs.job import job_settings
from introspect.jobs.settings import train_settings
from introspect.jobs.train import reevaluate
from introspect.metrics import ExpectedCalibrationError, bins_from_sums, reliability_bins
from introspect.report.console import console_table
from introspect.runs import distributed
from introspect.runs.csvlog import read_long_csv
from introspect.runs.distributed import launch, trainer_strategy, world_size
from introspect.stages.stage1 import build_data
from tests.conftest import run_isolated

REPO = Path(__file__).resolve().parents[1]

# 505 images: a test split of 101 (odd, so the two processes get 50 and 51), val 41, train 363
# in shards of 64 (six of them).
DDP_TINY = [
    "trainer=ddp_cpu",
    "data=synthetic",
    "data.num_samples=505",
    "data.image_size=8",
    "stage1.epochs=1",
    "stage2.head.epochs=1",
    "stage2.head.hidden=[32,16]",
    "stage2.extract_batch_size=32",
    "stage2.shard_batches=2",
    "eval.corruptions=[gaussian_noise,contrast]",
    "eval.severities=[1,5]",
    "eval.chunk_size=16",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
]
CELLS = [f"{c}/{s}" for c in ("gaussian_noise", "contrast") for s in (1, 5)]


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 101])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_contiguous_sampler_partitions_without_padding(n: int, world: int) -> None:
    blocks = [list(ContiguousSampler(n, rank, world)) for rank in range(world)]
    assert [i for block in blocks for i in block] == list(range(n))
    sizes = [len(ContiguousSampler(n, rank, world)) for rank in range(world)]
    assert sizes == [len(b) for b in blocks] and max(sizes) - min(sizes) <= 1


def test_bin_sums_of_shards_pool_to_the_bins_of_all_samples() -> None:
    g = torch.Generator().manual_seed(0)
    probs = (torch.randn(101, 5, generator=g) * 3).softmax(1)
    target = torch.randint(0, 5, (101,), generator=g)
    parts = []
    for block in (slice(0, 50), slice(50, 101)):  # what two processes hold
        metric = ExpectedCalibrationError(7)
        metric.update(probs[block], target[block])
        parts.append(metric.bin_sums())
    pooled = bins_from_sums(**{k: parts[0][k] + parts[1][k] for k in parts[0]})
    whole = reliability_bins(probs, target, 7)
    assert pooled["n"] == 101 and np.array_equal(pooled["count"], whole["count"])
    for key in ("ece", "accuracy_all", "confidence_all"):
        assert pooled[key] == pytest.approx(whole[key], abs=1e-12)
    np.testing.assert_allclose(pooled["accuracy"], whole["accuracy"], atol=1e-12)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer.strategy=ddp_spawn"], "trainer.strategy=ddp"),
        ([], "test runner.*python train.py trainer=ddp_cpu"),
    ],
)
def test_launch_refuses_what_cannot_run_the_pipeline(overrides: list[str], message: str) -> None:
    cfg = load_config(["trainer=ddp_cpu", *overrides])
    with pytest.raises(ConfigError, match=message):
        launch(job_settings(cfg).trainer)
    assert world_size() == 1


def test_launch_refuses_a_command_it_cannot_run_again(monkeypatch) -> None:
    """What a worker of a parallel test runner (``python -c``) looks like: no script."""
    import __main__

    monkeypatch.setattr(__main__, "__spec__", None, raising=False)
    monkeypatch.setattr(sys, "argv", ["-c"])
    with pytest.raises(ConfigError, match="here no script .*python train.py trainer=ddp_cpu"):
        settings = job_settings(load_config(["trainer=ddp_cpu"]))
        launch(settings.trainer, settings.run)
    assert world_size() == 1 and distributed._LAUNCHER_PID not in os.environ


def test_launch_of_one_process_starts_nothing() -> None:
    launch(job_settings(load_config(["trainer=cpu"])).trainer)
    assert world_size() == 1 and "LOCAL_RANK" not in os.environ


def _train(args: list[str], *, script: Path = REPO / "train.py", env=None, check: bool = True):
    proc = run_isolated([sys.executable, str(script), *args], cwd=REPO, env=env, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory):
    """One two-process run of ``train.py``; returns its folder, run directory and output."""
    tmp = tmp_path_factory.mktemp("ddp")
    # An extra split of a single image: one of the two processes evaluates nothing of it.
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp / "one.npz", x=x, y=np.array([0, 1, 2, 3, 9]))
    proc = _train(
        [
            *DDP_TINY,
            f"run.root={tmp / 'runs'}",
            f"stage2.cache_dir={tmp / 'cache'}",
            "eval.extra.one.source=npz",
            f"eval.extra.one.path={tmp / 'one.npz'}",
            "eval.extra.one.split=test",
            "logger=wandb",
        ],
        env={**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(tmp / "wandb")},
    )
    (run_dir,) = (tmp / "runs").iterdir()  # one name, chosen by rank zero for both
    return tmp, run_dir, proc


@pytest.mark.slow
def test_two_processes_run_every_stage_and_count_each_sample_once(ddp_run) -> None:
    tmp, run_dir, proc = ddp_run
    output = proc.stdout + proc.stderr
    assert "distributed_backend=gloo" in output and "MEMBER: 2/2" in output
    assert proc.stdout.count("run directory:") == 1
    table = (run_dir / "table.md").read_text().split("\n\n")[0]
    assert proc.stdout.count(console_table(table)) == 1  # printed once, by rank zero
    results = json.loads((run_dir / "results.json").read_text())
    assert results["run"]["config"]["trainer"]["devices"] == 2
    dm = build_data(train_settings(load_run_config(run_dir)).stage1)
    assert len(dm.split("test")) == 101
    counts = {split: entry["num_samples"] for split, entry in results["splits"].items()}
    assert counts == {"clean": 101, "one": 1, **dict.fromkeys(CELLS, 101)}
    # Rank zero alone wrote the run directory, the CSV log and one W&B run.
    assert {p.name for p in run_dir.iterdir()} == {
        "config.yaml", "status.json", "checkpoints", "stage2", "logs", "wandb", "results.json",
        "predictions.npz", "table.md", "reliability_clean.png", "reliability_corrupted.png",
    }  # fmt: skip
    assert len(list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))) == 1
    for name in ("checkpoints/stage1-best.ckpt", "stage2/introspective.pt", "stage2/control.pt"):
        assert (run_dir / name).is_file(), name
    logged = {name for _, name, _ in read_long_csv(run_dir / "logs" / "metrics.csv")}
    for kind in ("feedforward", "introspective", "control"):
        assert f"{kind}/train/loss" in logged and f"{kind}/val/acc" in logged
    manifests = [json.loads(p.read_text()) for p in (tmp / "cache").glob("*/manifest.json")]
    assert sorted((m["recipe"]["split"], m["num_samples"]) for m in manifests) == [
        ("train", 363),
        ("val", 41),
    ]
    assert all(m["complete"] for m in manifests)


@pytest.mark.slow
def test_two_process_metrics_equal_single_process_metrics(ddp_run, tmp_path: Path) -> None:
    _, run_dir, _ = ddp_run
    single_dir = tmp_path / "single"
    shutil.copytree(run_dir, single_dir)
    one_process = ["trainer.devices=1", "trainer.strategy=auto", "logger.wandb=false"]
    cfg = load_run_config(single_dir, one_process)
    single = reevaluate(train_settings(cfg), single_dir, single_dir / "evaluations" / "single")
    ddp = json.loads((run_dir / "results.json").read_text())
    assert list(single["splits"]) == list(ddp["splits"])
    for split, entry in ddp["splits"].items():
        assert single["splits"][split]["num_samples"] == entry["num_samples"]
        for head in ("feedforward", "introspective", "control"):
            for metric, value in entry[head].items():
                assert abs(single["splits"][split][head][metric] - value) <= 1e-6, (split, head)
    # The plots come from bin statistics summed over the processes: the same samples, once.
    # Only the figure title differs (it names the run and the evaluation): compare below it.
    for plot in ("reliability_clean.png", "reliability_corrupted.png"):
        again = single_dir / "evaluations" / "single" / plot
        with Image.open(again) as a, Image.open(run_dir / plot) as b:
            assert a.size == b.size, plot
            below_title = (0, 60, a.size[0], a.size[1])
            assert a.crop(below_title).tobytes() == b.crop(below_title).tobytes(), plot


DRIVER = """
import os, sys
sys.path.insert(0, {repo!r})
import train
from introspect.gradients.cache import FeatureCache
from introspect.runs.distributed import global_rank

original = FeatureCache.write_shard
written = []

def write_shard(self, plan, index, tensors):
    rank = global_rank()
    if rank == 1 and len(written) == int(os.environ["FAIL_AFTER_SHARDS"]):
        raise RuntimeError("injected failure during extraction")
    original(self, plan, index, tensors)
    written.append(index)
    with open(os.environ["SHARD_LOG"] + f".rank{{rank}}", "a") as log:
        log.write(f"{{plan.key}} {{index}}\\n")

FeatureCache.write_shard = write_shard
sys.exit(train.main(sys.argv[1:]))
"""


def _written(log: Path) -> dict[int, set[tuple[str, int]]]:
    """``{rank: {(entry key, shard index)}}`` written since the log was last removed."""
    out: dict[int, set[tuple[str, int]]] = {}
    for path in log.parent.glob(log.name + ".rank*"):
        rank = int(path.name.rpartition("rank")[2])
        lines = [line.split() for line in path.read_text().splitlines()]
        out[rank] = {(key, int(index)) for key, index in lines}
        path.unlink()
    return out


@pytest.mark.slow
def test_two_process_extraction_resumes_after_a_failure(ddp_run, tmp_path: Path) -> None:
    tmp, run_dir, _ = ddp_run
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(repo=str(REPO)))
    cache = tmp_path / "cache"
    args = [
        *DDP_TINY,
        f"backbone.checkpoint={run_dir / 'checkpoints' / 'stage1-best.ckpt'}",
        f"stage2.cache_dir={cache}",
        f"run.dir={tmp_path / 'run'}",
        "stage2.control=false",
        "stage2.head.epochs=1",
        "eval.corruptions=[]",
    ]
    log = tmp_path / "written"
    env = {**os.environ, "SHARD_LOG": str(log), "FAIL_AFTER_SHARDS": "1"}
    failed = _train(args, script=driver, env=env, check=False)
    assert failed.returncode != 0 and "injected failure" in failed.stderr
    first = set().union(*_written(log).values())
    (train_entry,) = {key for key, _ in first}
    assert (train_entry, 3) in first and (train_entry, 4) not in first  # rank 1: shards 3, 4, 5
    mtimes = {i: (cache / k / f"shard-{i:05d}.pt").stat().st_mtime_ns for k, i in first}

    env["FAIL_AFTER_SHARDS"] = "-1"
    _train([*args, "run.resume=true"], script=driver, env=env)
    second = _written(log)
    assert set(second) == {0, 1}  # both processes extracted a share of what was missing
    redone = set().union(*second.values())
    assert not redone & first
    for entry in {key for key, _ in first | redone}:
        manifest = json.loads((cache / entry / "manifest.json").read_text())
        assert manifest["complete"]
        shards = {i for key, i in first | redone if key == entry}
        assert shards == set(range(manifest["num_shards"])), entry
    assert {i: (cache / k / f"shard-{i:05d}.pt").stat().st_mtime_ns for k, i in first} == mtimes
    # Same backbone weights and recipe as the uninterrupted run: the same entries, equal features.
    for entry in {key for key, _ in redone}:
        resumed = FeatureCache(cache).load(entry)
        reference = FeatureCache(tmp / "cache").load(entry)
        for field, value in reference.items():
            torch.testing.assert_close(resumed[field], value, rtol=0, atol=1e-6)


def test_timeout_must_be_positive() -> None:
    assert load_config([]).trainer.timeout_s > 0
    with pytest.raises(ConfigError, match=r"^bad value 0 for 'trainer.timeout_s'.*\(0, inf\)"):
        load_config(["trainer=ddp_cpu", "trainer.timeout_s=0"])


def test_trainers_of_a_multi_process_run_use_the_timeout(monkeypatch) -> None:
    cfg = load_config(["trainer=ddp_cpu", "trainer.timeout_s=7"])
    assert (
        trainer_strategy(job_settings(cfg).trainer) == "ddp"
    )  # one process: the name, as configured
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    for name, unused in [("ddp", 0), ("auto", 0), ("ddp_find_unused_parameters_true", 1)]:
        cfg.trainer.strategy = name
        strategy = trainer_strategy(job_settings(cfg).trainer)
        assert isinstance(strategy, TrainerDDPStrategy)
        assert strategy._timeout == datetime.timedelta(seconds=7)
        assert strategy._ddp_kwargs.get("find_unused_parameters", False) == unused


@pytest.mark.parametrize(
    ("error", "kind"),
    [  # what gloo and the TCP store raised in two-process runs whose other process was killed
        # or stopped, and errors that are not about another process
        (RuntimeError("[/gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:8628: "
                      "Connection reset by peer. This is typically caused by ..."), "connection"),
        (RuntimeError("[/gloo/transport/tcp/pair.cc:561] Connection closed by peer "
                      "[127.0.0.1]:51602."), "connection"),
        (RuntimeError("[/gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 5000ms for "
                      "recv operation to complete"), "timeout"),
        (RuntimeError("Application timeout caused pair closure"), "timeout"),
        (torch.distributed.DistNetworkError("The client socket has timed out after 20000ms "
                                            "while trying to connect to (127.0.0.1, 49679)."),
         "timeout"),
        (torch.distributed.DistNetworkError("The server socket has failed to listen on any "
                                            "local network address. port: 29500, EADDRINUSE"),
         None),
        (RuntimeError("Distributed package doesn't have NCCL built in"), None),
        (RuntimeError("DataLoader timed out after 5 seconds"), None),
    ],
)  # fmt: skip
def test_errors_of_a_stopped_process_are_told_apart(error: Exception, kind: str | None) -> None:
    assert distributed._collective_error(error) == kind
    try:
        raise ValueError("raised while handling it") from error
    except ValueError as wrapped:
        assert distributed._collective_error(wrapped) == kind


# Runs train.py with faults: FAULTS maps a stage to [[rank, action], ...]; the rank SIGKILLs
# itself ("kill"), stops (SIGSTOP, "stop": alive but not answering) or sleeps ("busy": stuck
# outside any collective operation) when it first reaches that stage. The script first adopts
# every process of the run (a Linux child subreaper) to record how and when each one ended.
FAULT_DRIVER = """
import ctypes, json, os, signal, subprocess, sys, time

if os.environ.pop("FAULT_REAPER", None) == "1":
    if ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
        sys.exit("prctl failed")
    subprocess.Popen([sys.executable, __file__, *sys.argv[1:]])
    ends = {{}}
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        ends[pid] = [os.waitstatus_to_exitcode(status), time.time()]
    with open(os.environ["FAULT_ENDS"], "w") as out:
        json.dump(ends, out)
    sys.exit(0)

sys.path.insert(0, {repo!r})
import torch.distributed
import train
from introspect.gradients.cache import FeatureCache
from introspect.models.feedforward import FeedForwardClassifier
from introspect.runs import distributed
from introspect.stages.evaluation import Evaluator

FAULTS = json.loads(os.environ["FAULTS"])


def rank():
    if distributed.world_size() > 1:
        return distributed.global_rank()
    return int(os.environ.get("LOCAL_RANK", 0))


def event(name):
    line = dict(pid=os.getpid(), rank=rank(), event=name, time=time.time())
    with open(os.environ["FAULT_LOG"], "a") as log:
        log.write(json.dumps(line) + "\\n")


def logged(names):
    with open(os.environ["FAULT_LOG"]) as log:
        return [e for e in map(json.loads, log) if e["event"] in names]


def inject(owner, name, stage):
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        faults = FAULTS.get(stage, [])
        for target, action in faults:
            if target == rank():
                # A rank that stops waits until each "busy" rank of this stage is stuck where
                # the test puts it: the order of the faults is the test's, not a race.
                busy = {{r for r, a in faults if a == "busy" and r != target}}
                deadline = time.monotonic() + 600
                while busy and time.monotonic() < deadline:
                    if busy <= {{e["rank"] for e in logged(("busy",))}}:
                        break
                    time.sleep(0.1)
                event(action)
                if action == "busy":
                    time.sleep(3600)
                os.kill(os.getpid(), signal.SIGKILL if action == "kill" else signal.SIGSTOP)
        return original(*args, **kwargs)

    setattr(owner, name, wrapper)


def join_when_all_started(init):
    # A file rendezvous before the process group's: a rank that is slow to start under load
    # (imports, spawning) must not run out the short collective timeout the test is about.
    def wrapper(*args, **kwargs):
        event("ready")
        world = kwargs.get("world_size") or int(os.environ["WORLD_SIZE"])
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            with open(os.environ["FAULT_LOG"]) as log:
                ready = {{json.loads(line)["pid"] for line in log if '"ready"' in line}}
            if len(ready) >= world:
                break
            time.sleep(0.1)
        return init(*args, **kwargs)

    return wrapper


torch.distributed.init_process_group = join_when_all_started(torch.distributed.init_process_group)
inject(FeedForwardClassifier, "training_step", "stage1")
inject(FeatureCache, "write_shard", "extract")
inject(Evaluator, "test_step", "eval")
event("start")
sys.exit(train.main(sys.argv[1:]))
"""


def _run_with_faults(tmp_path: Path, faults: dict, timeout_s: int):
    """Output, ``{rank: (exit status, end time)}`` of the processes the script adopted or
    started (rank 0 and orphans), the time of the injected fault, and the run's processes
    that were still running at the end, of a two-process run of ``train.py`` with ``faults``."""
    script = tmp_path / "faults.py"
    script.write_text(FAULT_DRIVER.format(repo=str(REPO)))
    log, ends_file = tmp_path / "events.jsonl", tmp_path / "ends.json"
    env = {
        **os.environ,
        "FAULT_REAPER": "1",
        "FAULTS": json.dumps(faults),
        "FAULT_LOG": str(log),
        "FAULT_ENDS": str(ends_file),
    }
    args = [
        *DDP_TINY,
        f"trainer.timeout_s={timeout_s}",
        f"run.dir={tmp_path / 'run'}",
        f"stage2.cache_dir={tmp_path / 'cache'}",
    ]
    left = []
    try:
        # Today's 30-minute default would hang here: a bounded wait fails the test instead
        # (generous: a loaded machine runs the two processes slowly, not in a race with it).
        proc = run_isolated([sys.executable, str(script), *args], cwd=REPO, env=env,
                            timeout=timeout_s + 600)  # fmt: skip
    finally:
        lines = log.read_text().splitlines() if log.exists() else []
        events = [json.loads(line) for line in lines]
        for pid in {e["pid"] for e in events}:
            try:
                if str(script) in Path(f"/proc/{pid}/cmdline").read_text():
                    left.append(pid)
                    os.kill(pid, signal.SIGKILL)
            except (FileNotFoundError, ProcessLookupError):
                pass
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = {e["pid"]: e["rank"] for e in events if e["event"] == "start"}
    ends = {ranks[int(pid)]: tuple(end) for pid, end in json.loads(ends_file.read_text()).items()}
    faults = [e["time"] for e in events if e["event"] in ("kill", "stop")]
    assert len(faults) == 1, (
        f"{len(faults)} fault events were logged: {events}\n{proc.stderr[-3000:]}"
    )
    fault = faults[0]
    return proc.stdout + proc.stderr, ends, fault, left


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="child subreaper is Linux-only")
@pytest.mark.parametrize(
    ("faults", "survivor", "message", "timeout_s"),
    [
        # Killed during stage-1 training: the survivor's next all-reduce fails at once, long
        # before the (here generous) collective timeout.
        ({"stage1": [[1, "kill"]]}, 0, "process 1 of 2 stopped (killed by SIGKILL)", 300),
        # Alive but not answering during evaluation: the collective times out; the survivor
        # ends the stopped process too.
        ({"eval": [[1, "stop"]]}, 0, "process 1 of 2 did not answer within trainer.timeout_s=15 s",
         15),
        # Rank zero killed during extraction while the other is stuck outside any collective:
        # the survivor sees its parent gone and ends trainer.timeout_s later.
        ({"extract": [[0, "kill"], [1, "busy"]]}, 1, "process 0 of 2 stopped;", 15),
    ],
    ids=["rank1-killed", "rank1-hangs", "rank0-killed-other-busy"],
)  # fmt: skip
def test_when_one_process_stops_the_other_exits_with_one_line(
    tmp_path: Path, faults: dict, survivor: int, message: str, timeout_s: int
) -> None:
    output, ends, fault, left = _run_with_faults(tmp_path, faults, timeout_s)
    assert not left  # every process of the run ended
    status, end = ends[survivor]
    assert status == 1, output[-3000:]
    if survivor == 1:  # rank 0, the fault's victim, was adopted too
        assert ends[0][0] == -signal.SIGKILL
    # Ended by the fault, not by anything later (the timeout where it is the detector).
    assert end - fault < min(timeout_s, 15) + 60
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output[-3000:]
    assert errors[0].startswith(f"error: {message}") and "the run is incomplete" in errors[0]
    assert "Traceback" not in output  # one line, not the survivor's traceback


DDP_SCORING = """
import json, os, sys
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

def run(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from pathlib import Path
    from introspect.active.pool import LabelPool, initial_indices
    from introspect.config import load_config
    from introspect.jobs.active import Models
    from introspect.stages.stage1 import build_backbone, build_data
    from tests.test_active import make_learner
    from introspect.jobs.settings import train_settings
    from introspect.stages.heads import build_head

    cfg = load_config({tiny!r})
    dm = build_data(train_settings(cfg).stage1)
    backbone = build_backbone(train_settings(cfg).stage1, dm.num_classes, dm.image_shape).eval()
    backbone.load_state_dict(torch.load({backbone_path!r}, weights_only=True))
    state = torch.load({head_path!r}, weights_only=True)
    head = build_head(
        "introspective", backbone, state["feature_mean"].shape[0], 10,
        head=train_settings(cfg).stage2.head, features=train_settings(cfg).stage2.features,
    )
    head.load_head_state(state)
    learner = make_learner(cfg, dm, Path({tmp!r}), dm.split("test"))
    train = dm.split("train")
    pool = LabelPool(train, initial_indices(len(train), 10, seed=7))
    outs = learner.outputs(Models(backbone, head.eval()), pool, mc=False, key="k")
    counts = [None] * world
    dist.all_gather_object(counts, learner.backbone_passes)
    if rank == 0:
        torch.save(outs, out + ".pt")
        with open(out, "w") as f:
            json.dump({{"passes": counts, "unlabelled": len(pool.unlabelled)}}, f)
    dist.barrier()
    dist.destroy_process_group()

if __name__ == "__main__":
    mp.spawn(run, args=(2, int(sys.argv[1]), sys.argv[2]), nprocs=2)
"""


@pytest.mark.slow
def test_two_processes_score_every_active_pool_image_once(tmp_path: Path, single_thread) -> None:
    """Active learning's pool scoring: each process scores its block, all get every output."""
    from introspect.active.pool import LabelPool, initial_indices
    from introspect.jobs.active import Models
    from introspect.jobs.settings import train_settings
    from introspect.stages.heads import build_head
    from introspect.stages.stage1 import build_backbone
    from tests.conftest import run_two_process_script
    from tests.test_active import TINY, make_learner

    tiny = [*TINY, "active.batch_size=128", f"run.dir={tmp_path / 'run'}"]
    cfg = load_config(tiny)
    dm = build_data(train_settings(cfg).stage1)
    backbone = build_backbone(train_settings(cfg).stage1, dm.num_classes, dm.image_shape).eval()
    head = build_head(
        "introspective",
        backbone,
        10 * backbone.feature_dim,
        10,
        head=train_settings(cfg).stage2.head,
        features=train_settings(cfg).stage2.features,
    ).eval()
    torch.save(backbone.state_dict(), tmp_path / "backbone.pt")
    torch.save(head.head_state(), tmp_path / "head.pt")
    script = DDP_SCORING.format(
        tiny=tiny,
        backbone_path=str(tmp_path / "backbone.pt"),
        head_path=str(tmp_path / "head.pt"),
        tmp=str(tmp_path),
    )
    values = run_two_process_script(tmp_path, script)
    n = values["unlabelled"]
    assert values["passes"] == [n // 2, n - n // 2]  # each image through one backbone once
    learner = make_learner(cfg, dm, tmp_path, dm.split("test"))
    train = dm.split("train")
    pool = LabelPool(train, initial_indices(len(train), 10, seed=7))
    single = learner.outputs(Models(backbone, head), pool, mc=False, key="k")
    both = torch.load(tmp_path / "values.json.pt", weights_only=True)
    assert learner.backbone_passes == n == len(single["ff_logits"])
    for key in ("ff_logits", "ff_hidden", "int_logits", "int_hidden"):
        assert torch.allclose(both[key], single[key], atol=1e-5), key
