"""The import graph keeps its layers: core imports nothing else from gbmr, and only the command line reaches
up into experiment (train, sweep, pretraining)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "gbmr"
COMMAND_LINE = {"cli.py", "inspect_cli.py", "pretrain_cli.py", "sweep_cli.py", "analysis/cli.py"}


def gbmr_imports(path: Path) -> set[str]:
    """Every gbmr module the file imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gbmr"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("gbmr"))
    return found


def modules_under(folder: str) -> list[Path]:
    return sorted((PACKAGE / folder).rglob("*.py"))


def test_core_imports_only_core() -> None:
    for path in modules_under("core"):
        outside = {m for m in gbmr_imports(path) if not m.startswith("gbmr.core")}
        assert not outside, f"{path.name} imports {outside}"


def test_only_the_command_line_imports_experiment() -> None:
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.startswith("experiment/") or relative in COMMAND_LINE:
            continue
        upward = {m for m in gbmr_imports(path) if m.startswith("gbmr.experiment")}
        assert not upward, f"{relative} imports {upward}"


def test_the_checks_see_imports() -> None:
    """The walker finds function-level imports too (else the tests above would pass vacuously)."""
    assert "gbmr.experiment.train" in gbmr_imports(PACKAGE / "cli.py")
    assert "gbmr.core.errors" in gbmr_imports(PACKAGE / "core" / "run_dir.py")
