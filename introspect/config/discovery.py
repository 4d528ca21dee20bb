"""What can be configured: groups and their options, experiments and the top-level sections,
with one-line descriptions taken from the YAML files' leading comments and the schema."""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path

from introspect.config.schema import GROUPS, Config

_WIDTH = 100
# A full stop followed by a capital, except after abbreviations such as "et al." or "e.g.".
_SENTENCE_END = re.compile(r"(?<!\bal)(?<!\be\.g)(?<!\bi\.e)\.\s+(?=[A-Z])")


def first_line(path: Path) -> str:
    """The first sentence of a YAML file's leading comment block ("" when it has none)."""
    words: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped.startswith("#"):
            break
        words.append(stripped.lstrip("#").strip())
    text = " ".join(w for w in words if w)
    end = _SENTENCE_END.search(text)
    return text[: end.start() + 1] if end else text


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


def _options(config_dir: Path, group: str) -> list[Path]:
    return sorted((config_dir / group).glob("*.yaml"))


def root_choices(config_dir: Path) -> dict[str, str]:
    """The group options the root ``config.yaml`` picks by default."""
    from omegaconf import OmegaConf

    node = OmegaConf.load(config_dir / "config.yaml")
    defaults = node.get("defaults") or {}
    return {str(k): str(v) for k, v in dict(defaults).items()}


def section_docs() -> dict[str, str]:
    """Top-level config sections and the first line of their schema's docstring."""
    out: dict[str, str] = {}
    for f in dataclasses.fields(Config):
        factory = f.default_factory
        if factory is dataclasses.MISSING or not inspect.isclass(factory):
            continue
        doc = inspect.getdoc(factory) or ""
        out[f.name] = doc.split("\n\n")[0].replace("\n", " ")
    return out


def describe_configs(config_dir: Path, extra_groups: tuple[str, ...] = ()) -> str:
    """A help text listing every group with its options (default marked ``*``), every
    experiment with its one-line description and the top-level sections."""
    defaults = root_choices(config_dir)
    lines = ["Config groups (choose with group=option; * = default):"]
    for group in (*GROUPS, *extra_groups):
        names = [
            p.stem + ("*" if defaults.get(group) == p.stem else "")
            for p in _options(config_dir, group)
        ]
        lines.append(f"  {group:<10} {', '.join(names)}")
        for path in _options(config_dir, group):
            lines.append(f"    {path.stem:<22} {_short(first_line(path), _WIDTH - 27)}")
    lines += ["", "Experiments (experiment=NAME; each sets groups and keys, overridable):"]
    for path in _options(config_dir, "experiment"):
        lines.append(f"  {path.stem:<24} {_short(first_line(path), _WIDTH - 27)}")
    lines += ["", "Sections (override any key as section.key=value; --cfg shows the values):"]
    for name, doc in section_docs().items():
        lines.append(f"  {name:<10} {_short(doc, _WIDTH - 13)}")
    return "\n".join(lines)
