"""Run the notebooks top to bottom and store them with their outputs.

usage: python notebooks/regenerate.py [NAME.ipynb ...]   (default: every notebook here)

Each notebook runs in a fresh kernel in a temporary folder, importing this checkout's
package; the real-data notebooks read ``$INTROSPECT_SHARED_DATA`` (default ``../shared/data``
beside the repository). The run time of each is printed; a notebook that fails is left as it
was and the script exits 1.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def regenerate(path: Path, timeout_s: int = 600) -> float:
    """Execute the notebook at ``path`` and write it back with its outputs; return the
    seconds it ran."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p
    )
    os.environ.setdefault("MPLBACKEND", "Agg")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        client = NotebookClient(
            nb,
            timeout=timeout_s,
            kernel_name="python3",
            resources={"metadata": {"path": workdir}},
            record_timing=False,
        )
        client.execute()
    seconds = time.perf_counter() - start
    nb.metadata.pop("widgets", None)
    tmp = path.with_name(f".{path.name}.tmp")
    nbformat.write(nb, tmp)
    os.replace(tmp, path)  # atomic: a failed write never leaves half a notebook
    return seconds


def main(argv: list[str]) -> int:
    """Regenerate the notebooks named in ``argv`` (default: all in this folder)."""
    names = argv or sorted(p.name for p in HERE.glob("*.ipynb"))
    failed = False
    for name in names:
        path = HERE / name
        if not path.is_file():
            print(f"error: no notebook {path}; give names of notebooks in {HERE}", file=sys.stderr)
            return 2
        try:
            seconds = regenerate(path)
        except Exception as err:  # report and go on with the others
            failed = True
            print(f"{name}: failed: {type(err).__name__}: {str(err)[-2000:]}", file=sys.stderr)
            continue
        size = path.stat().st_size
        print(f"{name}: ran in {seconds:.1f} s, stored with outputs ({size / 1024:.0f} KiB)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
