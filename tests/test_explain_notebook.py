"""The explanations gallery notebook runs from top to bottom on real CIFAR-10 images."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "explanations.ipynb"


@pytest.mark.slow
@pytest.mark.shared_data
def test_explanations_notebook_executes(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The kernel imports this checkout's package and reads the same data folder as the tests.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("INTROSPECT_SHARED_DATA", str(shared_data))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "| gradcam |" in text and "| random |" in text  # the faithfulness table
    assert "incorrect" in text and "mean IoU" in text  # the VOICE summary
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    # methods, paradigms, introspection, curves, VOICE, filters, activations, patches,
    # neighbours, t-SNE
    assert len(images) >= 10
