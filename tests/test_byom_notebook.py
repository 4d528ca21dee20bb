"""The "bring your own model" notebook runs from top to bottom, in few lines of API code."""

from __future__ import annotations

import re
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "bring_your_own_model.ipynb"


def api_lines(nb: nbformat.NotebookNode) -> int:
    """Code lines of the cells not tagged ``user-code`` (the data and the user's own trainer),
    without imports, comments and blank lines."""
    count = 0
    for cell in nb.cells:
        if cell.cell_type != "code" or "user-code" in cell.metadata.get("tags", []):
            continue
        for line in cell.source.splitlines():
            text = line.strip()
            if text and not text.startswith("#") and not re.match(r"(import|from) ", text):
                count += 1
    return count


@pytest.mark.slow
def test_bring_your_own_model_executes(tmp_path: Path) -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert api_lines(nb) < 30
    client = NotebookClient(
        nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    start = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - start
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "Linear(in_features=512, out_features=10" in text  # the head was found
    accuracies = {
        name: float(value)
        for name, value in re.findall(r"(FF|INT|CTL)\s+test accuracy (\S+)", text)
    }
    assert set(accuracies) == {"FF", "INT", "CTL"}
    assert min(accuracies.values()) > 0.5, accuracies  # ten classes: chance is 0.1
    auroc = float(re.search(r"AUROC (\S+)", text).group(1))
    assert 0.0 <= auroc <= 1.0
    print(f"notebook ran in {elapsed:.1f} s; {api_lines(nb)} API lines; {accuracies}")
