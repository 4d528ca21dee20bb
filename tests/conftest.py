"""Shared fixtures: the optional real-data folder ``../shared/data``, processes that run in
sessions of their own, and small helpers."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist's ``--dist loadgroup``, the tests that run two processes of one
    job (DDP) share one worker: no two of them compete for the cores (their collectives wait
    at most ``trainer.timeout_s``), and ``test_ddp.py``'s two-process run is made once."""
    for item in items:
        in_ddp = item.path.name == "test_ddp.py" and item.get_closest_marker("slow")
        if in_ddp or "two_process" in item.name:
            item.add_marker(pytest.mark.xdist_group("two-processes"))


def shared_data_dir() -> Path:
    """The real-data folder: ``$INTROSPECT_SHARED_DATA`` or ``../shared/data`` beside the repo."""
    env = os.environ.get("INTROSPECT_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """Path of ``../shared/data``; the test is skipped when the folder is absent."""
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"real data folder {path} is absent")
    return path


@pytest.fixture(autouse=True, scope="session")
def _children_in_their_own_session():
    """Every process a test starts runs in a session (and process group) of its own, unless
    the test says otherwise: nothing it or its children do to their group (a signal to the
    group, a stopped member of an orphaned group, which earns the group SIGHUP) reaches the
    test runner."""
    original = subprocess.Popen.__init__

    def __init__(self, *args, **kwargs):
        if kwargs.get("process_group") is None:
            kwargs.setdefault("start_new_session", True)
        original(self, *args, **kwargs)

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    # SIGTERM (``timeout``, a CI runner) stops the tests like Ctrl-C: ``run_isolated`` then
    # kills the process group of the command it waits for, which the signal no longer reaches.
    sigterm = signal.signal(signal.SIGTERM, interrupt)
    subprocess.Popen.__init__ = __init__
    yield
    subprocess.Popen.__init__ = original
    signal.signal(signal.SIGTERM, sigterm)


def run_isolated(
    args: Sequence[str], *, timeout: float, cwd: Path | None = None, env: dict | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``args`` in a session of its own, capturing its output as text, like
    ``subprocess.run``; if it runs past ``timeout`` seconds or the test is stopped, kill its
    whole process group (the command and every process it started) before raising."""
    with subprocess.Popen(
        list(args),
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except BaseException:
            kill_group(proc.pid)
            proc.communicate()
            raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def kill_group(pgid: int) -> None:
    """SIGKILL every process of process group ``pgid`` (one a test started in its own session);
    nothing when the group is gone."""
    assert pgid != os.getpgrp(), "refusing to signal the test runner's own process group"
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run directory of one finished tiny run (``tests.test_pipeline.TINY``, the default
    seed) made by ``python train.py`` in a process of its own with one thread, shared by every
    module: tests only read it; a test that changes a run (or writes an evaluation into it)
    copies it first with ``shutil.copytree``."""
    import sys

    from tests.test_pipeline import TINY

    tmp = tmp_path_factory.mktemp("finished")
    run_dir = tmp / "run"
    args = [*TINY, f"run.dir={run_dir}", f"stage2.cache_dir={tmp / 'cache'}"]
    proc = run_isolated(
        [sys.executable, str(REPO / "train.py"), *args], cwd=REPO, env=one_thread_env(), timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


def one_thread_env() -> dict[str, str]:
    """The environment of a test's ``train.py`` process: this checkout first, W&B offline, one
    thread (runs compared bit for bit must share it)."""
    return {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread for a module of tiny models: a second thread only adds
    synchronization, which grows sharply when other jobs load the cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_two_process_script(tmp_path: Path, script: str) -> dict:
    """Run ``script`` (called as ``script.py PORT OUT``; it spawns two gloo processes and rank
    zero writes a JSON dict to OUT) and return that dict; the processes' stderr is written to
    this process's stderr."""
    import json
    import socket
    import sys

    path = tmp_path / "ddp.py"
    path.write_text(script)
    out = tmp_path / "values.json"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    # A bound on a hang, not on speed: a loaded machine starts the two processes slowly.
    proc = run_isolated([sys.executable, str(path), str(port), str(out)], env=env, timeout=600)
    sys.stderr.write(proc.stderr)  # the processes' notices, for tests that read them (capfd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def assert_drawn_inside(fig) -> None:
    """Every title, label, tick label and legend of ``fig``, as drawn, lies inside the figure
    (nothing clipped at its edges)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    page = fig.bbox
    texts = [fig._suptitle] if fig._suptitle is not None else []
    for ax in fig.axes:
        texts += [ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label]
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts if t.get_text()]
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
    boxes += [("legend", legend.get_window_extent(renderer)) for legend in legends]
    boxes.append(("everything drawn", fig.get_tightbbox(renderer).transformed(fig.dpi_scale_trans)))
    for name, box in boxes:
        assert box.x0 >= page.x0 - 1 and box.x1 <= page.x1 + 1, f"{name!r} is clipped left/right"
        assert box.y0 >= page.y0 - 1 and box.y1 <= page.y1 + 1, f"{name!r} is clipped top/bottom"
