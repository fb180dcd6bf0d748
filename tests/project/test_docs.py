"""The documentation: the site builds with `mkdocs build --strict` (every link and anchor resolves, every API page
imports its module's docstrings), the README stays a front page, and every command the README and the docs show
composes with the configs as they are (a renamed key or option fails here, not in a reader's terminal)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest
from helpers import ROOT, compose
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ValueType

from dpo_lightning.cli.checks import check_group_choices, check_task_spelling
from dpo_lightning.conf import CONF_DIR

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
README_MAX_LINES = 250
# A documented command: `python train.py …`, `dpo-train …` or `python -m dpo_lightning.cli.<name> …`, in a code block.
COMMAND = re.compile(r"^\s*(?:\$ )?(python train\.py|dpo-train|python -m dpo_lightning\.cli\.(?:pairs|winrate))\b(.*)$")
CONFIG_OF = {"python train.py": "config", "dpo-train": "config"}


def documented_commands() -> list[tuple[str, str, list[str]]]:
    """(where, config name, arguments) of every command line shown in a code block, continuations joined."""
    commands = []
    for page in PAGES:
        in_code, pending, start = False, "", 0
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), start=1):
            if line.lstrip().startswith("```"):
                in_code = not in_code
                continue
            if not in_code:
                continue
            if pending:
                pending += " " + line.strip()
            elif COMMAND.match(line):
                pending, start = line.strip(), number
            if pending and not pending.endswith("\\"):
                program, rest = COMMAND.match(pending).groups()
                text = re.sub(r"\\\s*", " ", rest.split("  #")[0].split(" # ")[0])
                config = CONFIG_OF.get(program, program.rsplit(".", 1)[-1])
                commands.append((f"{page.relative_to(ROOT)}:{start}", config, shlex.split(text)))
                pending = ""
    return commands


COMMANDS = documented_commands()


def _first_of_each_sweep(arguments: list[str]) -> list[str]:
    """The overrides of the sweep's first job (`beta=0.1,0.5` → `beta=0.1`); flags and Hydra groups dropped."""
    parser = OverridesParser.create()
    chosen = []
    for argument in arguments:
        if argument.startswith("-") or argument.lstrip("+~").startswith("hydra"):
            continue
        (override,) = parser.parse_overrides([argument])
        if override.is_sweep_override():
            if override.value_type == ValueType.INTERVAL_SWEEP:  # an Optuna range: no first value to pick
                continue
            first = next(iter(override.sweep_string_iterator()))
            argument = f"{argument.split('=', 1)[0]}={first}"
        chosen.append(argument)
    return chosen


def test_the_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; the rest belongs in docs/"


def test_commands_are_found():
    configs = {config for _, config, _ in COMMANDS}
    assert len(COMMANDS) >= 40 and {"config", "pairs", "winrate"} <= configs


@pytest.mark.parametrize(("where", "config", "arguments"), COMMANDS, ids=[where for where, _, _ in COMMANDS])
def test_every_documented_command_composes(where, config, arguments):
    check_group_choices(arguments, CONF_DIR)
    check_task_spelling(arguments)
    overrides = _first_of_each_sweep(arguments)
    compose(*overrides, config=config)


def test_an_old_spelling_in_a_command_is_caught():
    with pytest.raises(ValueError, match=r"task\.max_length: is now task\.tokenize\.max_length"):
        check_task_spelling(["task=sentiment", "task.max_length=128"])


def test_the_site_builds_strictly(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "site" / "index.html").is_file() and (tmp_path / "site" / "api").is_dir()
