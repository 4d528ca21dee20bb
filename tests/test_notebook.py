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
    # the extracted feature equals the closed form (N·p − 1) hᵀ, checked inside the notebook
    assert "equals (N·p − 1) hᵀ: True" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # the feature heat map and two reliability diagrams


def test_walkthrough_uses_only_the_public_api() -> None:
    """Every name the walkthrough takes from introspect is in the ``__all__`` of the module it
    comes from, and it never reaches into the command layer (jobs, stages, runs, cli, config)."""
    import ast
    import importlib

    nb = nbformat.read(NOTEBOOK, as_version=4)
    source = "\n".join(
        "\n".join(line for line in cell.source.splitlines() if not line.startswith("%"))
        for cell in nb.cells
        if cell.cell_type == "code"
    )
    imported = 0
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("introspect"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert alias.name in module.__all__, (node.module, alias.name)
                imported += 1
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id == "introspect":
                assert node.attr in importlib.import_module("introspect").__all__, node.attr
                imported += 1
    assert imported >= 8
    for layer in ("jobs", "stages", "runs", "cli", "config"):
        assert f"introspect.{layer}" not in source


@pytest.mark.parametrize(
    "name", ["walkthrough.ipynb", "explanations.ipynb", "bring_your_own_model.ipynb"]
)
def test_notebooks_are_stored_with_their_outputs(name: str) -> None:
    """Stored as ``notebooks/regenerate.py`` writes them: every code cell ran once, in order,
    without an error, and the figures are kept."""
    nb = nbformat.read(NOTEBOOK.parent / name, as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1))
    outputs = [o for cell in code for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert [o for o in outputs if o.output_type == "stream"]
    if name != "bring_your_own_model.ipynb":  # it prints accuracies and an AUROC, draws nothing
        assert [o for o in outputs if "image/png" in o.get("data", {})]
