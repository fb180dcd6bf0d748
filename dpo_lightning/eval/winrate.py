"""Win rates of a finished run's policy samples against the reference's and the chosen responses.

    python -m dpo_lightning.cli.winrate run_dir=RUN judge.name_or_path=REWARD_MODEL
    python -m dpo_lightning.cli.winrate run_dir=RUN judge=llm judge.model=gpt-4o step=256

Reads `RUN/samples/step_XXXXXX.csv` (the latest step unless `step=` is given; columns prompt, policy, reference,
chosen, policy_reward, reference_reward), lets the judge compare `policy` with each opponent column where that is
non-empty, and writes `RUN/winrate.json` and `RUN/winrate_step_XXXXXX.json`: the judge and its config (never a
key), and per opponent the counts, the win rate and its 95% Wilson interval, and the failures counted per reason.
Config mistakes and missing files print one line, `error: <key or path>: <problem>`, and exit with status 2.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import random
import re
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from dpo_lightning.errors import ConfigError, DataError
from dpo_lightning.eval.judges import Judge, Verdict

log = logging.getLogger(__name__)

SAMPLES_DIR = "samples"
SAMPLES_FILE = re.compile(r"^step_(\d+)\.csv$")
OPPONENTS = ("reference", "chosen")
Z_95 = 1.959963984540054  # the standard normal's 0.975 quantile


def wilson_interval(successes: float, n: int, z: float = Z_95) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion p̂ = successes / n (None when n = 0).

    With z the normal quantile (1.96 for 95%):

        center = (p̂ + z²/(2n)) / (1 + z²/n)
        half   = z / (1 + z²/n) · √(p̂(1 − p̂)/n + z²/(4n²))
        interval = [center − half, center + half]

    (Wilson 1927: the p with |p̂ − p| ≤ z·√(p(1 − p)/n).) Win rates pass successes = wins + ½·ties, which treats a
    tie as half a win; the interval is then approximate.
    """
    if n == 0:
        return None
    p = successes / n
    denominator = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, center - half), min(1.0, center + half)


@dataclass
class Tally:
    """Verdicts against one opponent. `n` counts decided comparisons (wins + losses + ties)."""

    wins: int = 0
    losses: int = 0
    ties: int = 0
    failed: int = 0
    unavailable: int = 0  # rows whose opponent column is empty: not compared
    failed_reasons: Counter[str] = field(default_factory=Counter)

    @property
    def n(self) -> int:
        return self.wins + self.losses + self.ties

    @property
    def win_rate(self) -> float | None:
        """(wins + ½·ties) / n; None when nothing was decided."""
        return (self.wins + 0.5 * self.ties) / self.n if self.n else None

    @property
    def ci95(self) -> tuple[float, float] | None:
        return wilson_interval(self.wins + 0.5 * self.ties, self.n)

    def add(self, verdict: Verdict) -> None:
        """Count one verdict of the policy (first) against the opponent (second)."""
        if verdict.outcome == "first":
            self.wins += 1
        elif verdict.outcome == "second":
            self.losses += 1
        elif verdict.outcome == "tie":
            self.ties += 1
        else:
            self.failed += 1
            self.failed_reasons[verdict.reason or "unknown"] += 1

    def to_json(self) -> dict[str, Any]:
        return {
            "comparisons": self.n + self.failed,
            "wins": self.wins,
            "losses": self.losses,
            "ties": self.ties,
            "failed": self.failed,
            "n": self.n,
            "win_rate": self.win_rate,
            "ci95": list(self.ci95) if self.ci95 else None,
            "unavailable": self.unavailable,
            "failed_reasons": dict(self.failed_reasons.most_common()),
        }


def find_samples(run_dir: Path, step: int | None = None) -> tuple[Path, int]:
    """The samples file of `step` (None: the highest step) in `run_dir/samples/`, and its step.

    Raises:
        ConfigError: `run_dir` is not a folder, or `step` has no samples file.
        DataError: the run folder has no samples file at all.
    """
    if not run_dir.is_dir():
        raise ConfigError("run_dir", f"{run_dir}: no such folder")
    folder = run_dir / SAMPLES_DIR
    steps = {}
    if folder.is_dir():
        for path in folder.iterdir():
            match = SAMPLES_FILE.match(path.name)
            if match and path.is_file():
                steps[int(match.group(1))] = path
    if not steps:
        raise DataError(f"{folder}: no samples file (step_XXXXXX.csv, written at each validation)")
    if step is None:
        step = max(steps)
    if step not in steps:
        raise ConfigError("step", f"{folder}: no samples of step {step}; steps with samples: {sorted(steps)}")
    return steps[step], step


def read_samples(path: Path, columns: Sequence[str]) -> list[dict[str, str]]:
    """The rows of a samples CSV (every value a string); raises `DataError` naming the file if a column is missing."""
    try:
        with path.open(newline="", encoding="utf-8") as file:
            reader = csv.DictReader(file)
            rows = list(reader)
            found = list(reader.fieldnames or [])
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path}: cannot read: {error}") from error
    missing = [column for column in columns if column not in found]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; found {found}")
    return rows


def win_rates(
    rows: Sequence[dict[str, str]],
    judge: Judge,
    opponents: Sequence[str],
    max_comparisons: int | None = None,
    seed: int = 0,
) -> dict[str, Tally]:
    """Judge `policy` (first) against each opponent column (second), on the rows where the opponent is non-empty.

    With `max_comparisons`, each opponent gets the first `max_comparisons` such rows of one seeded shuffle of the
    rows, so the opponents are compared on the same rows where both are available.
    """
    order = list(range(len(rows)))
    if max_comparisons is not None:
        random.Random(seed).shuffle(order)
    results = {}
    for opponent in opponents:
        tally = Tally()
        chosen = [i for i in order if rows[i][opponent] != ""]
        tally.unavailable = len(rows) - len(chosen)
        if max_comparisons is not None:
            chosen = sorted(chosen[:max_comparisons])
        log.info("judging %d comparisons of policy against %s", len(chosen), opponent)
        verdicts = judge.compare_many(
            [rows[i]["prompt"] for i in chosen],
            [rows[i]["policy"] for i in chosen],
            [rows[i][opponent] for i in chosen],
        )
        for verdict in verdicts:
            tally.add(verdict)
        results[opponent] = tally
    return results


def format_table(results: dict[str, Tally]) -> str:
    """A short fixed-width table of the tallies, one line per opponent."""
    lines = [f"{'opponent':<10} {'n':>5} {'wins':>5} {'losses':>6} {'ties':>5} {'failed':>6}  {'win rate':>8}  95% CI"]
    for opponent, tally in results.items():
        rate = f"{tally.win_rate:.3f}" if tally.win_rate is not None else "—"
        interval = f"[{tally.ci95[0]:.3f}, {tally.ci95[1]:.3f}]" if tally.ci95 else "—"
        lines.append(
            f"{opponent:<10} {tally.n:>5} {tally.wins:>5} {tally.losses:>6} {tally.ties:>5} {tally.failed:>6}"
            f"  {rate:>8}  {interval}"
        )
    return "\n".join(lines)


def validate_winrate_config(cfg: DictConfig) -> None:
    """Checks that need no model or file: required keys set, opponents known, step and max_comparisons valid."""
    missing = sorted(OmegaConf.missing_keys(cfg), key=lambda key: (key.count("."), key))  # run_dir first
    if missing:
        raise ConfigError(missing[0], "required but not set (give it on the command line)")
    opponents = list(cfg.opponents)
    if not opponents:
        raise ConfigError("opponents", f"must name at least one of {', '.join(OPPONENTS)}")
    for opponent in opponents:
        if opponent not in OPPONENTS:
            raise ConfigError("opponents", f"unknown opponent {opponent!r}; choose from {', '.join(OPPONENTS)}")
    if len(set(opponents)) != len(opponents):
        raise ConfigError("opponents", f"lists an opponent twice: {opponents}")
    if cfg.step is not None and (not isinstance(cfg.step, int) or cfg.step < 0):
        raise ConfigError("step", f"must be a global step ≥ 0 or null, got {cfg.step}")
    if cfg.max_comparisons is not None and (not isinstance(cfg.max_comparisons, int) or cfg.max_comparisons < 1):
        raise ConfigError("max_comparisons", f"must be ≥ 1 or null, got {cfg.max_comparisons}")


def build_judge(judge_cfg: DictConfig) -> Judge:
    """The `judge` config's `_target_` class called with its other keys (errors raised as they are, one line)."""
    options = OmegaConf.to_container(judge_cfg, resolve=True)
    target = options.pop("_target_")
    return get_class(target)(**options)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Run the whole command on a composed `winrate` config: write the JSON files, print the table, return the
    report."""
    validate_winrate_config(cfg)
    run_dir = Path(cfg.run_dir)
    samples, step = find_samples(run_dir, cfg.step)
    rows = read_samples(samples, ["prompt", "policy", *cfg.opponents])
    judge = build_judge(cfg.judge)
    try:
        results = win_rates(rows, judge, list(cfg.opponents), cfg.max_comparisons, cfg.seed)
    finally:
        close = getattr(judge, "close", None)
        if close is not None:
            close()
    report = {
        "run_dir": str(run_dir),
        "samples": str(samples.relative_to(run_dir)),
        "step": step,
        "rows": len(rows),
        "judge": {"name": judge.name, "config": OmegaConf.to_container(cfg.judge, resolve=True)},
        "max_comparisons": cfg.max_comparisons,
        "seed": cfg.seed,
        "opponents": {opponent: tally.to_json() for opponent, tally in results.items()},
    }
    text = judge.redact(json.dumps(report, indent=2, ensure_ascii=False)) + "\n"
    for name in ("winrate.json", f"winrate_step_{step:06d}.json"):
        (run_dir / name).write_text(text, encoding="utf-8")
    print(f"win rates of the policy at step {step} ({judge.name} judge, {len(rows)} rows of {samples}):")
    print(judge.redact(format_table(results)))
    print(f"wrote {run_dir / 'winrate.json'}")
    return report


if __name__ == "__main__":  # the command of earlier versions
    print("error: the winrate command is now: python -m dpo_lightning.cli.winrate", file=sys.stderr)
    sys.exit(2)
