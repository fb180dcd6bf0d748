"""The Losses table of the docs (docs/losses.md) against the code: one row per `conf/loss/*.yaml` option, the
hyperparameters and defaults of that yaml, and a reference column that says what the instantiated objective
needs."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from helpers import compose
from hydra.utils import instantiate

from dpo_lightning.conf import CONF_DIR
from dpo_lightning.losses import Objective

PAGE = CONF_DIR.parents[1] / "docs" / "losses.md"
LOSSES = sorted(path.stem for path in (CONF_DIR / "loss").glob("*.yaml"))
HEADER = ["`loss`", "objective per pair", "paper", "hyperparameters", "reference"]
NOT_HYPERPARAMETERS = {"_target_", "_convert_", "beta"}  # `beta` is top-level: the cell names it as `beta`
CELL_SEPARATOR = re.compile(r"(?<!\\)\|")  # a `|` not escaped as `\|`


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in CELL_SEPARATOR.split(line.strip())[1:-1]]


def losses_table(page: str) -> dict[str, dict[str, str]]:
    """The rows of the one table of the Losses page, by loss name: {column header: cell}."""
    lines = [line for line in page.splitlines() if line.startswith("|")]
    assert len(lines) > 2 and _cells(lines[0]) == HEADER, f"the Losses table's header must be {HEADER}"
    rows: dict[str, dict[str, str]] = {}
    for line in lines[2:]:
        cells = _cells(line)
        assert len(cells) == len(HEADER), f"row with {len(cells)} cells, not {len(HEADER)}: {line}"
        name = re.match(r"`(\w+)`", cells[0])
        assert name, f"the first cell names no loss: {line}"
        assert name[1] not in rows, f"two rows for loss={name[1]}"
        rows[name[1]] = dict(zip(HEADER, cells, strict=True))
    return rows


def reference_cell(objective: Objective) -> str:
    """What the reference column says for an objective."""
    if not objective.needs_reference:
        return "none (never built)"
    return "needs; `reference=none` OK" if objective.reference_free_ok else "needs"


def _yaml_text(value: Any) -> str:
    """A scalar as the yaml (and the table) writes it."""
    if value is None:
        return "null"
    return str(value).lower() if isinstance(value, bool) else str(value)


def table_problems(page: str, objectives: dict[str, Objective], confs: dict[str, dict]) -> list[str]:
    """Where the Losses table disagrees with the loss options (empty: it agrees)."""
    rows = losses_table(page)
    problems = []
    if set(rows) != set(objectives):
        problems.append(f"rows {sorted(rows)} != conf/loss options {sorted(objectives)}")
    for name in sorted(set(rows) & set(objectives)):
        row, conf = rows[name], confs[name]
        if row["reference"] != reference_cell(objectives[name]):
            problems.append(
                f"{name}: reference {row['reference']!r}, the objective says {reference_cell(objectives[name])!r}"
            )
        cell = row["hyperparameters"]
        keys, expected = set(re.findall(r"`loss\.(\w+)`", cell)), set(conf) - NOT_HYPERPARAMETERS
        if keys != expected:
            problems.append(f"{name}: hyperparameters {sorted(keys)}, conf/loss/{name}.yaml has {sorted(expected)}")
        if ("`beta`" in cell) != ("beta" in conf):
            problems.append(f"{name}: the hyperparameters cell and conf/loss/{name}.yaml disagree on `beta`")
        for key, value in re.findall(r"`loss\.(\w+)` ([^\s,;]+)", cell):
            default = conf.get(key)
            if not isinstance(default, list | dict) and value != _yaml_text(default):
                problems.append(f"{name}: loss.{key} default {value} in the table, {_yaml_text(default)} in the yaml")
    return problems


@pytest.fixture(scope="module")
def objectives() -> dict[str, Objective]:
    """Every loss option's objective, instantiated from the composed config."""
    return {name: instantiate(compose("logger=none", f"loss={name}").loss) for name in LOSSES}


@pytest.fixture(scope="module")
def confs() -> dict[str, dict]:
    return {name: yaml.safe_load((CONF_DIR / "loss" / f"{name}.yaml").read_text()) for name in LOSSES}


def test_the_docs_losses_table_matches_the_loss_options(objectives, confs):
    assert table_problems(PAGE.read_text(encoding="utf-8"), objectives, confs) == []


def _drop_row(page: str, name: str) -> str:
    return "".join(line for line in page.splitlines(keepends=True) if not line.startswith(f"| `{name}`"))


def _in_row(page: str, name: str, old: str, new: str) -> str:
    return "".join(
        line.replace(old, new) if line.startswith(f"| `{name}`") else line for line in page.splitlines(keepends=True)
    )


MISTAKES = {
    "a missing row": lambda page: _drop_row(page, "hinge"),
    "a row for no option": lambda page: "".join(
        line + line.replace("| `dpo` (default)", "| `dpox`") if line.startswith("| `dpo` (default)") else line
        for line in page.splitlines(keepends=True)
    ),
    "a loss wrongly marked reference-free": lambda page: _in_row(
        page, "exo_pair", "| needs |", "| needs; `reference=none` OK |"
    ),
    "a reference-free loss marked as needing one": lambda page: _in_row(
        page, "ipo", "needs; `reference=none` OK", "needs"
    ),
    "a reference-less loss marked as needing one": lambda page: _in_row(page, "orpo", "none (never built)", "needs"),
    "a wrong default": lambda page: _in_row(page, "discopop", "`loss.tau` 0.05", "`loss.tau` 0.5"),
    "a missing hyperparameter": lambda page: _in_row(page, "aot", ", `loss.paired` true", ""),
    "beta listed for a loss without it": lambda page: _in_row(
        page, "sft", "| `loss.length_normalized`", "| `beta`, `loss.length_normalized`"
    ),
}


@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_the_check_catches(mistake, objectives, confs):
    page = PAGE.read_text(encoding="utf-8")
    wrong = MISTAKES[mistake](page)
    assert wrong != page, f"the mistake {mistake!r} changed nothing: update it to the page"
    assert table_problems(wrong, objectives, confs)
