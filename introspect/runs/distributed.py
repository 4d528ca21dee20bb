"""The processes of a multi-process (DDP) run: starting them, their ranks, the few
collectives the pipeline needs outside Lightning's loops (no-ops in a single process), and
stopping every process, with one line on stderr, when one of them stops."""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TypeVar

import torch
import torch.distributed as dist
from lightning.fabric import Fabric
from lightning.fabric.plugins.environments import LightningEnvironment
from lightning.fabric.strategies import DDPStrategy
from lightning.pytorch.strategies import DDPStrategy as TrainerDDPStrategy
from lightning.pytorch.strategies import StrategyRegistry

from introspect.config import ConfigError
from introspect.config.schema import TrainerConfig
from introspect.runs.options import RunOptions
from introspect.runs.status import read_status

T = TypeVar("T")

# Strategies whose processes re-run the launching command (one per device) and keep running
# the whole pipeline; spawn/fork strategies would return nothing of the stages run in them.
_SPAWNING = ("spawn", "fork", "notebook")


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def global_rank() -> int:
    """This process's rank among all processes of the run (0 in a single-process run)."""
    return dist.get_rank() if _initialized() else 0


def world_size() -> int:
    """The number of processes of the run (1 in a single-process run)."""
    return dist.get_world_size() if _initialized() else 1


def is_global_zero() -> bool:
    """Whether this process is rank zero, the only one that writes run files and logs."""
    return global_rank() == 0


def barrier() -> None:
    """Wait until every process of the run reaches this point."""
    if not _initialized():
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def broadcast_from_zero(obj: T) -> T:
    """Rank zero's ``obj`` (picklable) on every process."""
    if not _initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_from_all(obj: T) -> list[T]:
    """Every process's ``obj`` (picklable), in rank order, on every process."""
    if not _initialized():
        return [obj]
    out: list[T] = [obj] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


# Set by the process that starts the others (its pid): they watch it while it runs.
_LAUNCHER_PID = "INTROSPECT_LAUNCHER_PID"


def _exit_reason(code: int) -> str:
    """How a process with exit status ``code`` (as ``Popen.returncode``) ended."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


# How torch.distributed (gloo, its TCP store) says that another process is gone or silent.
_GONE = ("connection closed by peer", "connection reset by peer", "broken pipe", "refused")
_SILENT = ("timed out", "timeout")


def _collective_error(err: BaseException) -> str | None:
    """``"timeout"`` or ``"connection"`` when ``err`` (or an error it came from) is a collective
    operation or rendezvous of ``torch.distributed`` that failed because another process did
    not answer or is gone; None for any other error."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current).lower()
        if isinstance(current, dist.DistError) or (
            isinstance(current, RuntimeError) and ("gloo" in text or "pair closure" in text)
        ):
            if any(phrase in text for phrase in _SILENT):
                return "timeout"
            if any(phrase in text for phrase in _GONE):
                return "connection"
        current = current.__cause__ or current.__context__
    return None


class _Watch:
    """Ends this process, with one line on stderr, when another process of the run stops.

    The process that started the others (local rank 0 under Lightning's launcher) waits on
    each of them; each of them watches that it still has that process as parent. Once one has
    stopped, this process stops at its next failed collective operation (the entry points call
    ``report_stopped_process``) or ``trainer.timeout_s`` later, whichever comes first.
    """

    def __init__(self) -> None:
        self.world = 1
        self.rank = 0
        self.timeout_s = 0.0
        self.run: RunOptions | None = None
        self.run_dir: Path | None = None
        self.children: list[subprocess.Popen] = []
        self.failure: str | None = None
        self._lock = threading.Lock()
        self._reported = False

    def start(
        self, run: RunOptions | None, timeout_s: float, strategy: DDPStrategy, local: int
    ) -> None:
        """Watch the other processes of the run ``run`` that ``strategy`` is about to launch,
        waiting ``timeout_s`` for them after one stopped."""
        env = strategy.cluster_environment
        self.world = local * strategy.num_nodes
        first = env.node_rank() * local  # global rank of this node's local rank 0
        self.rank = first + env.local_rank()
        self.timeout_s = float(timeout_s)
        self.run = run  # its run directory is known once the run has made it
        if not isinstance(env, LightningEnvironment):
            return  # torchrun, SLURM, ...: the tool that started the processes watches them
        if not env.creates_processes_externally:
            os.environ[_LAUNCHER_PID] = str(os.getpid())  # inherited by the processes started
            target, args = self._watch_children, (strategy.launcher, first)
        elif env.local_rank() > 0 and os.environ.get(_LAUNCHER_PID, "").isdigit():
            target, args = self._watch_parent, (int(os.environ[_LAUNCHER_PID]), first)
        else:
            return
        threading.Thread(target=target, args=args, name="introspect-watch", daemon=True).start()

    def _watch_children(self, launcher: object, first: int) -> None:
        procs = getattr(launcher, "procs", None)
        if not isinstance(procs, list):
            return
        while not procs:  # Lightning's launcher fills the list when it starts the processes
            if not threading.main_thread().is_alive():
                return
            time.sleep(0.05)
        self.children = list(procs)
        # Lightning's own observer would SIGKILL this process, silently, 5 s after a process
        # it started fails; an empty list ends that observer, the threads below replace it.
        procs.clear()
        for i, proc in enumerate(self.children):
            rank = first + 1 + i
            threading.Thread(
                target=self._wait_child, args=(proc, rank), name=f"wait-rank{rank}", daemon=True
            ).start()

    def _wait_child(self, proc: subprocess.Popen, rank: int) -> None:
        code = proc.wait()
        if code != 0:
            self._stopped(f"process {rank} of {self.world} stopped ({_exit_reason(code)})")

    def _watch_parent(self, parent: int, rank: int) -> None:
        what = f"process {rank} of {self.world} stopped"
        if os.getppid() != parent:  # gone before this process could join it
            self._stopped(what, wait=False)
        while os.getppid() == parent:
            time.sleep(0.5)
        self._stopped(what)

    def _stopped(self, what: str, *, wait: bool = True) -> None:
        """Another process stopped: exit ``trainer.timeout_s`` from now (or now, without
        ``wait``) unless this one is done already."""
        if not threading.main_thread().is_alive():
            return  # the job is over (or ending on its own): its exit status stands
        with self._lock:
            self.failure = self.failure or what
        if wait:
            time.sleep(self.timeout_s)
        if threading.main_thread().is_alive():
            self.report(self.failure)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1)

    def hint(self) -> str:
        """How to go on: resume a run that has a directory and status, else run again."""
        run_dir = self.run_dir or (_named_run_dir(self.run) if self.run is not None else None)
        status = read_status(run_dir) if run_dir is not None else None
        if status is None:
            return "no run directory was made yet: run the same command again"
        if status.get("state") == "complete":  # a re-evaluation of a finished run
            return "run the same command again (it continues the evaluation)"
        return f"continue it with run.resume=true (run {run_dir})"

    def report(self, what: str) -> None:
        """Print the one-line report (once per process) and stop the processes started here."""
        with self._lock:
            if not self._reported:
                self._reported = True
                # On a line of its own, also after an unfinished progress bar.
                print(
                    f"\nerror: {what}; the run is incomplete — see that process's output "
                    f"above; {self.hint()}",
                    file=sys.stderr,
                    flush=True,
                )
        for proc in self.children:
            if proc.poll() is None:
                proc.kill()

    def report_error(self, err: BaseException) -> bool:
        """Report ``err`` if it is a collective operation that failed because another process
        stopped or did not answer; False, doing nothing, for any other error."""
        if self.world <= 1:
            return False
        kind = _collective_error(err)
        if kind is None:
            return False
        if kind == "connection" and self.children:
            # Its connection closes as a process dies, just before it can be waited for (the
            # wait ends as soon as it is; the bound only covers a connection lost otherwise).
            deadline = time.monotonic() + 10.0
            while self.failure is None and time.monotonic() < deadline:
                time.sleep(0.05)
        if self.failure is not None:
            what = self.failure
        else:
            other = f"process {1 - self.rank} of 2" if self.world == 2 else "another process"
            if kind == "timeout":
                what = f"{other} did not answer within trainer.timeout_s={self.timeout_s:g} s"
            else:
                what = f"{other} stopped (its connection closed)"
        self.report(what)
        return True


_watch = _Watch()


def _named_run_dir(run: RunOptions) -> Path | None:
    """The run directory ``run`` names (``dir``, else ``root/name``); None while no name is
    chosen yet (then no directory exists either)."""
    if run.dir:
        return Path(str(run.dir)).expanduser()
    if run.name:
        return Path(str(run.root)).expanduser() / str(run.name)
    return None


def watch_run_dir(run_dir: Path) -> None:
    """Tell this process's watch (see ``launch``) the directory its run has made."""
    _watch.run_dir = run_dir


def report_stopped_process(err: BaseException) -> bool:
    """Print one line on stderr and stop this node's other processes when ``err`` means that
    another process of this multi-process run stopped or did not answer within
    ``trainer.timeout_s``; False, printing nothing, for any other error (re-raise it)."""
    return _watch.report_error(err)


def trainer_strategy(trainer: TrainerConfig) -> str | TrainerDDPStrategy:
    """``trainer.strategy`` for a ``lightning.Trainer``: in a multi-process run, a ``ddp``
    strategy (what ``auto`` picks there too) that waits at most ``trainer.timeout_s`` for the
    other processes; the name itself otherwise."""
    name = str(trainer.strategy)
    if world_size() <= 1:
        return name
    if name == "auto":
        options: dict = {}
    elif name in StrategyRegistry and StrategyRegistry[name]["strategy"] is TrainerDDPStrategy:
        options = dict(StrategyRegistry[name]["init_params"])
    else:
        return name
    timeout = datetime.timedelta(seconds=trainer.timeout_s)
    return TrainerDDPStrategy(timeout=timeout, **options)


def _launch_command() -> str | None:
    """The module or script that Lightning re-runs to start the other processes; None when
    there is none to re-run (``python -c``, an interactive session, a test runner's worker)."""
    import __main__

    spec = getattr(__main__, "__spec__", None)
    if spec is not None:
        return spec.name
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    return script.name if script is not None and script.is_file() else None


def launch(t: TrainerConfig, run: RunOptions | None = None) -> None:
    """Start the other processes of a multi-process trainer ``t`` (of the run ``run``) and join
    its process group.

    ``trainer.devices`` processes per node (times ``trainer.num_nodes``) run the command that
    started this one from its beginning, as Lightning's ``ddp`` strategy does; every later
    ``Trainer`` of the run reuses the processes and their group. Collectives wait at most
    ``trainer.timeout_s`` for the other processes. Once a process Lightning started here (or
    the one that started this process) has stopped, this one stops too, at its next collective
    operation or ``trainer.timeout_s`` later (see ``report_stopped_process``). Does nothing
    for a single-process configuration or when the group exists already (e.g. under
    ``torchrun``). Raises ``ConfigError`` for strategies whose processes would not run the
    whole pipeline.
    """
    if _initialized():
        return
    fabric = Fabric(
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=DDPStrategy(timeout=datetime.timedelta(seconds=t.timeout_s)),
    )
    strategy = fabric.strategy
    assert isinstance(strategy, DDPStrategy)
    local = len(strategy.parallel_devices or [])
    if local * strategy.num_nodes <= 1:
        return
    name = str(t.strategy)
    if not (name == "auto" or name.startswith("ddp")) or any(s in name for s in _SPAWNING):
        raise ConfigError(
            f"trainer.strategy={name!r} cannot run the pipeline on several processes; set "
            "trainer.strategy=ddp (each process runs every stage, so spawned processes would "
            "return nothing of them)"
        )
    command = _launch_command()
    if command is None or command.split(".")[0] in ("pytest", "_pytest", "py"):
        here = "no script" if command is None else repr(command)
        raise ConfigError(
            f"a multi-process run re-runs the command that started it, here {here} (a test "
            "runner, python -c or an interactive session); start it as a subprocess, e.g. "
            "python train.py trainer=ddp_cpu"
        )
    _watch.start(run, t.timeout_s, strategy, local)
    fabric.launch()
