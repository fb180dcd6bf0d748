"""The import contracts of pyproject.toml (`[tool.importlinter]`): data flows one way through the layers, no module
imports the command line, no two siblings import each other. `lint-imports` checks them; a violation fails here."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """`lint-imports` on the package under `root` (its pyproject.toml), no cache."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    command = [str(Path(sys.executable).with_name("lint-imports")), "--no-cache", "--no-logo"]
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_the_contracts_hold():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout[-4000:]
    assert "Contracts: 2 kept, 0 broken." in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        ("data/collate.py", "from dpo_lightning.cli import command", "Layers"),  # library → entry point
        ("models/logprobs.py", "from dpo_lightning.training import module", "Layers"),  # an upward import
        ("data/tokenize.py", "from dpo_lightning.data import datamodule", "No import cycles"),  # a cycle
    ],
)
def test_a_violation_breaks_the_build(tmp_path, module, line, broken):
    shutil.copytree(ROOT / "dpo_lightning", tmp_path / "dpo_lightning", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    path = tmp_path / "dpo_lightning" / module
    path.write_text(path.read_text() + f"\n{line}  # noqa\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0 and f"{broken}" in result.stdout.split("Broken contracts")[-1], result.stdout[-3000:]
