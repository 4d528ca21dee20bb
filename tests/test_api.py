"""The public API: ``import introspect`` loads no torch, every exported name resolves and is
documented, and every lower subpackage lists its public names in ``__all__``."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys

import pytest

import introspect

LOWER = (
    "gradients",
    "scores",
    "detect",
    "uncertainty",
    "explain",
    "sanity",
    "models",
    "active",
    "quality",
    "metrics",
    "data",
    "corruptions",
    "backbones",
    "attacks",
    "config",
)


def test_import_is_torch_free() -> None:
    code = "import sys, introspect; print('torch' in sys.modules, len(dir(introspect)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded, names = out.stdout.split()
    assert loaded == "False"
    assert int(names) >= len(introspect.__all__)


def test_top_level_names_resolve_and_are_documented() -> None:
    for name in introspect.__all__:
        value = getattr(introspect, name)
        if name != "__version__":
            assert inspect.getdoc(value), name
    assert introspect.Introspector is importlib.import_module("introspect.gradients").Introspector
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        introspect.nope  # noqa: B018


@pytest.mark.parametrize("package", LOWER)
def test_subpackages_export_documented_names(package: str) -> None:
    module = importlib.import_module(f"introspect.{package}")
    assert module.__all__, package
    for name in module.__all__:
        value = getattr(module, name)
        if callable(value):
            assert inspect.getdoc(value), f"introspect.{package}.{name} has no docstring"
        if inspect.isfunction(value):
            hints = inspect.signature(value)
            assert hints.return_annotation is not inspect.Signature.empty, f"{package}.{name}"
