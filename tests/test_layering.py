"""The folders import one another in one direction, as docs/architecture.md says: the runtime
never reaches for torch or the torch side, quant never for torch, models never for exporters,
and nothing below the CLI imports a command."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import ROOT

# folder (or file glob) -> module prefixes its files may not import, at any level of a function
FORBIDDEN = {
    "edgert/*.py": ("torch", "transformers", "edgert.models", "edgert.exporters", "edgert.quant", "edgert.cli"),
    "quant/*.py": ("torch", "transformers", "edgert.models", "edgert.exporters", "edgert.cli"),
    "models/*.py": ("edgert.exporters", "edgert.quant", "edgert.cli"),
    "exporters/*.py": ("edgert.cli",),
    "trt_plugins/*.py": ("transformers", "edgert.exporters", "edgert.quant", "edgert.cli"),
}
ALLOWED = {"edgert/__main__.py"}  # `python -m edgert` starts the CLI


def imported_modules(path: Path) -> list[str]:
    """Every absolute module name `path` imports, top level and inside functions."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
    return names


@pytest.mark.parametrize("pattern", FORBIDDEN)
def test_folders_import_in_one_direction(pattern):
    files = sorted(ROOT.glob(pattern))
    assert files, pattern
    wrong = []
    for path in files:
        if path.relative_to(ROOT).as_posix() in ALLOWED:
            continue
        for name in imported_modules(path):
            if any(name == prefix or name.startswith(prefix + ".") for prefix in FORBIDDEN[pattern]):
                wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert wrong == []
