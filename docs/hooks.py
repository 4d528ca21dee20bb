"""MkDocs hooks: pages generated from the code at every build, so that they cannot drift.

- ``reference/configuration.md``: every key of the configuration schema (``introspect.config``)
  with its type, valid range or choices, default and description.
- ``reference/api/<package>.md``: one mkdocstrings entry for every name in the ``__all__`` of
  ``introspect`` and of each of its subpackages that declares one.
- ``notebooks/<name>.md``: the notebooks of ``notebooks/`` rendered as pages (their cells, in
  order; the tests execute them).

The functions are plain Python, so the tests can compare their output with the schema and the
public API without running MkDocs.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import io
import json
import pkgutil
import re
import sys
import tokenize
import typing
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
API_DIR = "reference/api"
CONFIG_PAGE = "reference/configuration.md"
NOTEBOOK_DIR = "notebooks"


# ----------------------------------------------------------------------------- configuration


def _field_comments(source: str) -> dict[tuple[str, str], str]:
    """Comment lines directly above each dataclass field: (class name, field) -> text."""
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    out: dict[tuple[str, str], str] = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        for stmt in node.body:
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                lines: list[str] = []
                line = stmt.lineno - 1
                while line in comments:
                    lines.insert(0, comments[line])
                    line -= 1
                if lines:
                    out[(node.name, stmt.target.id)] = " ".join(lines)
    return out


def _docstring_entry(doc: str, name: str) -> str:
    """The ``name``: ... fragment of a class docstring that describes one field ("" if none)."""
    text = " ".join(doc.split())
    match = re.search(rf"``{re.escape(name)}``(?: \([^)]*\))?: (.+?)(?:; ``\w+``[^;]*:|$)", text)
    if not match:
        return ""
    return match.group(1).rstrip(" ;.") + "."


def _type_name(tp: Any) -> str:
    """A short, readable name of a field's type annotation."""
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    text = str(tp).replace("typing.", "").replace("NoneType", "None")
    return re.sub(r"introspect\.[\w.]+\.", "", text)


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _format_value(value: Any) -> str:
    if value is None:
        return "`null`"
    if isinstance(value, float):
        return f"`{value:g}`"
    if isinstance(value, str):
        return f'`"{value}"`' if value else '`""`'
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    text = json.dumps(value, default=str)
    return f"`{text}`" if len(text) <= 60 else f"`{text[:57]}…`"


def _describe_range(r: Any) -> str:
    """A schema ``Range`` in interval notation, whole numbers written out in full."""

    def bound(v: float | None, inf: str) -> str:
        if v is None:
            return inf
        return str(int(v)) if float(v).is_integer() else f"{v:g}"

    left = "(" if r.low is None or r.low_open else "["
    right = ")" if r.high is None or r.high_open else "]"
    return f"{left}{bound(r.low, '-inf')}, {bound(r.high, 'inf')}{right}"


def config_rows() -> list[dict[str, str]]:
    """Every leaf key of the configuration schema, in schema order: its dotted path, type,
    valid values (range or choices), default, description and the section it belongs to."""
    from introspect.config import schema

    comments = _field_comments(Path(schema.__file__).read_text(encoding="utf-8"))
    rows: list[dict[str, str]] = []

    def walk(cls: type, prefix: str, section: str) -> None:
        hints = typing.get_type_hints(cls)
        doc = cls.__doc__ or ""
        for f in dataclasses.fields(cls):
            path = f"{prefix}{f.name}"
            tp = hints[f.name]
            if dataclasses.is_dataclass(tp):
                walk(tp, path + ".", section)
                continue
            if path in schema.CHOICES:
                valid = ", ".join(f"`{c}`" for c in schema.CHOICES[path])
            elif path in schema.RANGES:
                valid = f"`{_describe_range(schema.RANGES[path])}`"
            else:
                valid = ""
            description = comments.get((cls.__name__, f.name)) or _docstring_entry(doc, f.name)
            default = _default(f)
            if dataclasses.is_dataclass(default) and not isinstance(default, type):
                default = dataclasses.asdict(default)
            elif isinstance(default, list):
                default = [
                    dataclasses.asdict(d) if dataclasses.is_dataclass(d) else d for d in default
                ]
            rows.append(
                {
                    "key": path,
                    "section": section,
                    "type": _type_name(tp),
                    "valid": valid,
                    "default": "" if default is dataclasses.MISSING else _format_value(default),
                    "description": description,
                }
            )

    hints = typing.get_type_hints(schema.Config)
    for f in dataclasses.fields(schema.Config):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            walk(tp, f.name + ".", f.name)
        else:
            rows.append(
                {
                    "key": f.name,
                    "section": "top level",
                    "type": _type_name(tp),
                    "valid": ", ".join(f"`{c}`" for c in schema.CHOICES.get(f.name, ())),
                    "default": _format_value(_default(f)),
                    "description": comments.get(("Config", f.name), ""),
                }
            )
    return rows


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def config_reference_markdown() -> str:
    """The configuration reference page: one table per top-level section of the schema."""
    from introspect.config import schema

    hints = typing.get_type_hints(schema.Config)
    lines = [
        "# Configuration reference",
        "",
        "Generated at every docs build from the schema in `introspect/config/schema.py` (the",
        "dataclasses, `CHOICES` and `RANGES`), so it lists exactly the keys a run accepts.",
        "Set any key on the command line as `section.key=value` (e.g.",
        "`python train.py stage2.head.epochs=30`); `python train.py --cfg` prints the resolved",
        "values of a run and `python train.py --help` lists the config groups and experiments.",
        "A value outside *Valid* stops the run before any work, with a one-line message.",
        "",
    ]
    rows = config_rows()
    sections: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        sections.setdefault(row["section"], []).append(row)
    for section, section_rows in sections.items():
        lines.append(f"## `{section}`" if section != "top level" else "## Top-level keys")
        lines.append("")
        tp = hints.get(section)
        if tp is not None and dataclasses.is_dataclass(tp) and tp.__doc__:
            lines += [" ".join(tp.__doc__.split()), ""]
        lines.append("| Key | Type | Valid | Default | Description |")
        lines.append("| --- | --- | --- | --- | --- |")
        for row in section_rows:
            lines.append(
                f"| `{row['key']}` | {_cell(row['type'])} | {_cell(row['valid'])} "
                f"| {_cell(row['default'])} | {_cell(row['description'])} |"
            )
        lines.append("")
    lines.append(f"{len(rows)} keys in {len(sections)} sections.")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- API reference


def public_packages() -> dict[str, list[str]]:
    """``introspect`` and each of its subpackages that declares ``__all__``: name -> names."""
    import introspect

    out: dict[str, list[str]] = {}
    if getattr(introspect, "__all__", None):
        out["introspect"] = list(introspect.__all__)
    for info in sorted(pkgutil.iter_modules(introspect.__path__), key=lambda i: i.name):
        if not info.ispkg:
            continue
        module = importlib.import_module(f"introspect.{info.name}")
        names = getattr(module, "__all__", None)
        if names:
            out[module.__name__] = list(names)
    return out


def _canonical(package: str, name: str) -> str:
    """Where a public name is defined, for mkdocstrings: ``module.qualname`` of a class or
    function, else the name under its package."""
    obj = getattr(importlib.import_module(package), name)
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if (
        isinstance(module, str)
        and module.startswith("introspect")
        and isinstance(qualname, str)
        and "<" not in qualname
    ):
        return f"{module}.{qualname}"
    # A constant: the deepest loaded introspect module that binds the same object.
    homes = [
        m.__name__
        for m in list(sys.modules.values())
        if m is not None
        and getattr(m, "__name__", "").startswith(package)
        and vars(m).get(name) is obj
    ]
    return f"{max(homes, key=len)}.{name}" if homes else f"{package}.{name}"


def api_page_markdown(
    package: str, names: list[str], documented: dict[str, str] | None = None
) -> str:
    """The API page of one public package: its docstring and an entry per ``__all__`` name.

    ``documented`` maps the canonical path of every object already documented on another
    page to that page; such a name (e.g. a top-level re-export) becomes a link to it, so that
    no object has two entries. The objects documented here are added to it."""
    documented = {} if documented is None else documented
    module = importlib.import_module(package)
    summary = (module.__doc__ or "").strip()
    lines = [f"# `{package}`", "", summary, ""]
    lines.append(f"Public names (`{package}.__all__`): " + ", ".join(f"`{n}`" for n in names))
    lines.append("")
    links: list[str] = []
    for name in names:
        path = _canonical(package, name)
        if path in documented:
            links.append(f"| `{name}` | [{documented[path]}]({documented[path]}.md#{path}) |")
            continue
        documented[path] = package
        lines += [
            f"::: {path}",
            "    options:",
            "      heading_level: 2",
            "      show_root_heading: true",
            "      show_root_full_path: false",
            "",
        ]
    if links:
        lines += ["## Documented with their packages", "", "| Name | Package |", "| --- | --- |"]
        lines += links + [""]
    return "\n".join(lines)


def api_index_markdown(packages: dict[str, list[str]]) -> str:
    """The API overview: every public package with its first docstring line and its names."""
    lines = [
        "# API reference",
        "",
        "Generated at every docs build from the `__all__` of `introspect` and its subpackages:",
        "a name added to a public `__all__` appears here without any edit to the docs. Names not",
        "listed are internal and may change.",
        "",
        "| Package | What it holds | Names |",
        "| --- | --- | --- |",
    ]
    for package, names in packages.items():
        doc = (importlib.import_module(package).__doc__ or "").strip().split("\n\n")[0]
        lines.append(
            f"| [`{package}`]({package}.md) | {_cell(' '.join(doc.split()))} | {len(names)} |"
        )
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- notebooks


def notebook_markdown(path: Path) -> str:
    """A notebook as a page: markdown cells as they are, code cells as Python blocks."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    parts = [
        f'!!! note "Notebook `notebooks/{path.name}`"\n'
        "    Run it with `jupyter lab notebooks/` (or execute it as the tests do). The cells "
        "are shown without outputs.\n"
    ]
    for cell in nb.get("cells", []):
        source = "".join(cell.get("source", []))
        if cell.get("cell_type") == "markdown":
            parts.append(source)
        elif cell.get("cell_type") == "code" and source.strip():
            parts.append(f"```python\n{source}\n```")
    return "\n\n".join(parts) + "\n"


def notebooks() -> list[Path]:
    """The repository's notebooks."""
    return sorted((ROOT / "notebooks").glob("*.ipynb"))


# ----------------------------------------------------------------------------- architecture

PACKAGE_MAP_MARKER = "<!-- package-map -->"


def package_map_markdown() -> str:
    """A table of introspect's subpackages with the first paragraph of their docstrings."""
    import introspect

    lines = ["| Package | What it holds |", "| --- | --- |"]
    for info in sorted(pkgutil.iter_modules(introspect.__path__), key=lambda i: i.name):
        if not info.ispkg:
            continue
        init = ROOT / "introspect" / info.name / "__init__.py"
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
        summary = " ".join(doc.split("\n\n")[0].split())
        lines.append(f"| `introspect/{info.name}/` | {_cell(summary)} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- hooks


def on_config(config: Any) -> Any:
    """Adds the generated API and notebook pages to the navigation."""
    packages = public_packages()
    api_nav: list[Any] = [{"Overview": f"{API_DIR}/index.md"}]
    api_nav += [{package: f"{API_DIR}/{package}.md"} for package in packages]
    nb_nav = [{p.stem.capitalize(): f"{NOTEBOOK_DIR}/{p.stem}.md"} for p in notebooks()]
    for entry in config["nav"]:
        if isinstance(entry, dict) and "Reference" in entry:
            entry["Reference"].append({"API": api_nav})
        if isinstance(entry, dict) and "Notebooks" in entry:
            entry["Notebooks"] = nb_nav
    return config


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Fills the package map into the architecture page."""
    if PACKAGE_MAP_MARKER in markdown:
        markdown = markdown.replace(PACKAGE_MAP_MARKER, package_map_markdown())
    return markdown


def on_files(files: Any, config: Any) -> Any:
    """Adds the generated pages to the site's files."""
    from mkdocs.structure.files import File

    def add(uri: str, content: str) -> None:
        files.append(File.generated(config, uri, content=content))

    add(CONFIG_PAGE, config_reference_markdown())
    packages = public_packages()
    add(f"{API_DIR}/index.md", api_index_markdown(packages))
    documented: dict[str, str] = {}
    # Subpackages first: a name the top level re-exports links to its package's entry.
    for package in sorted(packages, key=lambda p: p == "introspect"):
        add(f"{API_DIR}/{package}.md", api_page_markdown(package, packages[package], documented))
    for path in notebooks():
        add(f"{NOTEBOOK_DIR}/{path.stem}.md", notebook_markdown(path))
    return files
