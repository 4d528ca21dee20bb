"""The walkthrough notebook runs from top to bottom without errors."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "walkthrough.ipynb"


@pytest.mark.slow
def test_walkthrough_executes(tmp_path: Path) -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "| clean |" in text  # the comparison table was printed
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # the feature heat map and two reliability diagrams


@pytest.mark.parametrize("name", ["walkthrough.ipynb", "explanations.ipynb"])
def test_notebooks_are_stored_with_their_outputs(name: str) -> None:
    """Stored as ``notebooks/regenerate.py`` writes them: every code cell ran once, in order,
    without an error, and the figures are kept."""
    nb = nbformat.read(NOTEBOOK.parent / name, as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1))
    outputs = [o for cell in code for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert [o for o in outputs if "image/png" in o.get("data", {})]
