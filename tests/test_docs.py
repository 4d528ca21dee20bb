"""The docs site builds with ``mkdocs build --strict`` and its generated references are
complete: every configuration key of the schema and every public ``__all__`` name is on a
page. The README stays an entrance (at most 250 lines, the CI test command in place), and no
file of the repository points to a document outside it."""

from __future__ import annotations

import dataclasses
import html
import importlib
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import introspect
from introspect.config.schema import Config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site built in strict mode (any warning — broken link, missing page, API object
    that no longer exists — fails the build)."""
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return out


def _schema_keys() -> set[str]:
    """Every leaf key of the schema, flattened from OmegaConf's view of the dataclasses."""
    keys: set[str] = set()

    def walk(node: object, prefix: str) -> None:
        for name in node.keys():  # type: ignore[attr-defined]
            child = node._get_node(name)  # type: ignore[attr-defined]
            path = f"{prefix}{name}"
            if OmegaConf.is_dict(child) and child._metadata.object_type not in (None, dict):
                walk(child, path + ".")
            else:
                keys.add(path)

    walk(OmegaConf.structured(Config), "")
    return keys


def _page_text(path: Path) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", path.read_text(encoding="utf-8")))


def test_configuration_reference_lists_every_schema_key(site: Path) -> None:
    page = (site / "reference" / "configuration" / "index.html").read_text(encoding="utf-8")
    # The first cell of each table row is the key.
    listed = {html.unescape(k) for k in re.findall(r"<tr>\s*<td><code>([^<]+)</code></td>", page)}
    expected = _schema_keys()
    assert len(expected) > 200
    assert listed == expected, (sorted(expected - listed), sorted(listed - expected))


def test_configuration_reference_shows_defaults_and_ranges(site: Path) -> None:
    text = _page_text(site / "reference" / "configuration" / "index.html")
    assert re.search(r"stage2\.head\.dropout\s+float\s+\[0, 1\)\s+0\.1\b", text)
    assert re.search(r"data\.source\s+str\s+digits, cifar10, [\w, ]+\s+\"digits\"", text)
    assert re.search(r"data\.path\s+str \| None\s+null", text)
    default = Config()
    assert f"{default.eval.n_bins}" in text


def _public_all() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    if getattr(introspect, "__all__", None):
        out["introspect"] = list(introspect.__all__)
    for info in pkgutil.iter_modules(introspect.__path__):
        if info.ispkg:
            module = importlib.import_module(f"introspect.{info.name}")
            if getattr(module, "__all__", None):
                out[module.__name__] = list(module.__all__)
    return out


def test_api_pages_document_every_public_name(site: Path) -> None:
    packages = _public_all()
    assert "introspect.gradients" in packages and "introspect.metrics" in packages
    missing = []
    for package, names in packages.items():
        page = site / "reference" / "api" / package / "index.html"
        assert page.exists(), f"no API page for {package}"
        source = page.read_text(encoding="utf-8")
        anchors = set(re.findall(r'<h2 id="([^"]+)" class="doc doc-heading"', source))
        # A re-export documented with its own package is a link to that entry.
        linked = set(re.findall(r'href="\.\./(introspect[\w.]*)/#([^"]+)"', source))
        for name in names:
            here = any(a == name or a.endswith(f".{name}") for a in anchors)
            there = [
                (page, anchor)
                for page, anchor in linked
                if anchor.endswith(f".{name}")
                and f'id="{anchor}"'
                in (site / "reference" / "api" / page / "index.html").read_text(encoding="utf-8")
            ]
            if not (here or there):
                missing.append(f"{package}.{name}")
    assert not missing, missing


def test_notebooks_are_pages(site: Path) -> None:
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        page = site / "notebooks" / notebook.stem / "index.html"
        assert page.exists(), notebook.name
        assert "import" in _page_text(page)


def test_readme_is_an_entrance() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250, len(lines)
    marker = lines.index("<!-- test-command -->")
    assert lines[marker + 1] == "```bash" and "pytest" in lines[marker + 2]
    assert "mkdocs serve" in "\n".join(lines)


def test_no_file_points_to_a_document_outside_the_repository() -> None:
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    pattern = re.compile(r"METHOD\.md|shared/seeds|shared/METHOD")
    offenders = [
        name
        for name in tracked
        if (ROOT / name).is_file()
        and name != "tests/test_docs.py"
        and pattern.search((ROOT / name).read_text(encoding="utf-8", errors="ignore"))
    ]
    assert not offenders, offenders


def test_config_rows_match_dataclass_defaults() -> None:
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        hooks = importlib.import_module("hooks")
    finally:
        sys.path.remove(str(ROOT / "docs"))
    rows = {row["key"]: row for row in hooks.config_rows()}
    assert rows["stage2.head.hidden"]["default"] == "`[256, 128]`"
    assert rows["run.seed"]["valid"] == f"`[0, {2**32 - 1}]`"
    assert rows["stage1.optim.lr"]["valid"] == "`(0, inf)`"
    assert rows["eval.mc_dropout.p"]["valid"] == "`[0, 1)`"
    epochs = next(f for f in dataclasses.fields(type(Config().stage1)) if f.name == "epochs")
    assert rows["stage1.epochs"]["default"] == f"`{epochs.default}`"
