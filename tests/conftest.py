"""Shared fixtures: the optional real-data folder ``../shared/data`` and small helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


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
    zero writes a JSON dict to OUT) and return that dict."""
    import json
    import socket
    import subprocess
    import sys

    path = tmp_path / "ddp.py"
    path.write_text(script)
    out = tmp_path / "values.json"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, str(path), str(port), str(out)], check=True, env=env, timeout=120
    )
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
