"""The reward–KL frontier of a sweep (the DPO paper's Figure 2, left): expected reward against KL(π ‖ π_ref).

Reads finished runs (any folder under a sweep folder holding `summary.json`): one point per run (its final
validation) or, `per_validation`, one per validation row of `csv/metrics.csv` (the policy at that training step);
one series per loss (`choices.loss`). Writes `frontier.csv` and `frontier.png`. The command around it, which can
also run the sweep and log the plot to W&B, is `python -m dpo_lightning.cli.frontier`.
"""

from __future__ import annotations

import csv
import json
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from dpo_lightning.errors import DataError

REWARD, REWARD_SE, KL, KL_SE, REFERENCE = "val/reward", "val/reward_se", "val/kl", "val/kl_se", "val/reference_reward"
STEP = "val/step"  # the global step whose weights a validation sampled (logged by eval/callback.py)
X_LABEL = "KL(π ‖ π_ref) (nats, sequence-level)"
Y_LABEL = "mean reward of policy samples"
REFERENCE_LABEL = "reference (SFT)"
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


@dataclass(frozen=True)
class FrontierPoint:
    """One policy on the frontier, or (reward and kl None, reason in `note`) a run that could not be plotted."""

    run: str  # the run folder relative to the sweep folder
    series: str  # the loss: choices.loss
    beta: float | None
    step: int | None  # global step of the validation
    reward: float | None
    reward_se: float | None
    kl: float | None
    kl_se: float | None
    status: str  # the run's summary.json status
    note: str = ""
    reference_reward: float | None = None  # not a frontier.csv column: it feeds the reference line
    task: str | None = None  # not a frontier.csv column: it feeds the title

    @property
    def plotted(self) -> bool:
        return self.reward is not None and self.kl is not None


CSV_COLUMNS = tuple(f.name for f in fields(FrontierPoint) if f.name not in ("reference_reward", "task"))


def find_runs(sweep_dir: Path) -> list[Path]:
    """Every folder under `sweep_dir` (itself included) holding `summary.json`, in natural order (2 before 10)."""
    folders = {path.parent for path in sweep_dir.rglob("summary.json") if path.is_file()}
    return sorted(folders, key=lambda folder: _natural_key(folder.relative_to(sweep_dir)))


def collect_points(sweep_dir: Path, per_validation: bool) -> list[FrontierPoint]:
    """The frontier's points, plotted and skipped, of every run under `sweep_dir`.

    Raises DataError when `sweep_dir` is not a folder or holds no run.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise DataError(f"{sweep_dir}: not a folder")
    runs = find_runs(sweep_dir)
    if not runs:
        raise DataError(f"{sweep_dir}: no runs (no summary.json in it or below)")
    points: list[FrontierPoint] = []
    for folder in runs:
        points.extend(_run_points(folder, folder.relative_to(sweep_dir).as_posix(), per_validation))
    return points


def reference_reward(points: Sequence[FrontierPoint]) -> float | None:
    """Mean `val/reference_reward` over runs (each run's plotted points averaged first); None without any."""
    by_run: dict[str, list[float]] = {}
    for point in points:
        if point.plotted and point.reference_reward is not None and math.isfinite(point.reference_reward):
            by_run.setdefault(point.run, []).append(point.reference_reward)
    run_means = [sum(values) / len(values) for values in by_run.values()]
    return sum(run_means) / len(run_means) if run_means else None


def frontier_title(points: Sequence[FrontierPoint]) -> str:
    """`Reward–KL frontier · <task(s)>`."""
    tasks = sorted({point.task for point in points if point.task})
    return "Reward–KL frontier" + (f" · {', '.join(tasks)}" if tasks else "")


def plot_frontier(points: Sequence[FrontierPoint], title: str) -> Figure:
    """Reward against KL, one coloured series per loss with standard-error bars, each point labelled with β."""
    figure = Figure(figsize=(7, 5), layout="constrained")
    axes = figure.add_subplot()
    plotted = [point for point in points if point.plotted]
    for index, series in enumerate(sorted({point.series for point in plotted})):
        members = sorted((p for p in plotted if p.series == series), key=lambda p: (p.kl, p.beta or 0.0))
        axes.errorbar(
            [p.kl for p in members],
            [p.reward for p in members],
            xerr=[_or_nan(p.kl_se) for p in members],
            yerr=[_or_nan(p.reward_se) for p in members],
            fmt=MARKERS[index % len(MARKERS)],
            color=f"C{index % 10}",
            capsize=2,
            label=series,
        )
        for point in members:
            if point.beta is not None:
                axes.annotate(
                    f"β={point.beta:g}", (point.kl, point.reward), xytext=(4, 4), textcoords="offset points", fontsize=7
                )
    reference = reference_reward(points)
    if reference is not None:
        axes.axhline(reference, color="0.3", linestyle="--", linewidth=1, label=REFERENCE_LABEL)
        axes.plot([0.0], [reference], marker="*", markersize=10, color="0.3", linestyle="none")
    axes.set_xlabel(X_LABEL)
    axes.set_ylabel(Y_LABEL)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    if plotted or reference is not None:
        axes.legend()
    return figure


def write_frontier(points: Sequence[FrontierPoint], out_dir: Path, title: str) -> tuple[Path, Path]:
    """Write `frontier.csv` (every point, skipped runs included) and `frontier.png` to `out_dir`; return both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = out_dir / "frontier.csv", out_dir / "frontier.png"
    with csv_path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for point in points:
            writer.writerow({k: "" if v is None else v for k, v in asdict(point).items()})
    plot_frontier(points, title).savefig(png_path, dpi=150)
    return csv_path, png_path


def format_table(points: Sequence[FrontierPoint]) -> str:
    """The plotted points (series, β, step, KL, reward ± se) sorted by series then KL, then the skipped runs."""
    plotted = sorted((p for p in points if p.plotted), key=lambda p: (p.series, p.kl, p.beta or 0.0))
    lines = [f"{'series':<14} {'β':>8} {'step':>7} {'KL':>10} {'reward':>10}  ± se"]
    for p in plotted:
        beta = "" if p.beta is None else f"{p.beta:g}"
        step = "" if p.step is None else str(p.step)
        se = "" if p.reward_se is None else f"{p.reward_se:.4f}"
        lines.append(f"{p.series:<14} {beta:>8} {step:>7} {p.kl:>10.4f} {p.reward:>10.4f}  {se}")
    skipped = [p for p in points if not p.plotted]
    if skipped:
        lines.append(f"skipped {len(skipped)}:")
        lines.extend(f"  {p.run}: {p.note}" for p in skipped)
    return "\n".join(lines)


# --- reading one run ---------------------------------------------------------------------------------------------


def _run_points(folder: Path, run: str, per_validation: bool) -> list[FrontierPoint]:
    """The points of one run folder: its final validation, or every validation row; a skipped point otherwise."""
    try:
        summary = json.loads((folder / "summary.json").read_text())
        if not isinstance(summary, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as error:
        return [FrontierPoint(run, "?", None, None, None, None, None, None, "unknown", f"summary.json: {error}")]
    config, choices = as_mapping(summary.get("config")), as_mapping(summary.get("choices"))
    base = FrontierPoint(
        run=run,
        series=_series(choices, config),
        beta=_optional_float(as_mapping(config.get("loss")).get("beta")),  # None: a loss without β (baselines)
        step=None,
        reward=None,
        reward_se=None,
        kl=None,
        kl_se=None,
        status=str(summary.get("status", "unknown")),
        task=choices.get("task") or as_mapping(config.get("task")).get("name"),
    )
    if base.status != "completed":
        return [replace(base, note=f"{base.status}: {summary.get('error') or 'no error recorded'}")]
    if not per_validation:
        try:
            step = _optional_int(summary.get("global_step"))
        except ValueError as error:
            return [replace(base, note=f"summary.json global_step: {error}")]
        return [_point(base, step, as_mapping(summary.get("metrics")), "summary.json metrics")]
    try:
        rows = _validation_rows(folder / "csv" / "metrics.csv")
    except (OSError, ValueError, csv.Error) as error:
        return [replace(base, note=f"csv/metrics.csv: {error}")]
    if not rows:
        return [replace(base, note=f"csv/metrics.csv: no validation row with {REWARD} and {KL}")]
    return [_point(base, step, values, f"csv/metrics.csv step {step}") for step, values in rows]


def _point(base: FrontierPoint, step: int | None, metrics: dict[str, Any], origin: str) -> FrontierPoint:
    """`base` with the numbers of `metrics`, or with the reason it cannot be plotted."""
    base = replace(base, step=step)
    missing = [name for name in (REWARD, KL) if metrics.get(name) in (None, "")]
    if missing:
        return replace(base, note=f"no {' or '.join(missing)} in {origin}")
    try:
        values = {name: _optional_float(metrics.get(name)) for name in (REWARD, REWARD_SE, KL, KL_SE, REFERENCE)}
    except ValueError as error:
        return replace(base, note=f"{origin}: {error}")
    not_finite = [name for name in (REWARD, KL) if not math.isfinite(values[name])]
    if not_finite:
        return replace(base, note=f"{' and '.join(not_finite)} not finite in {origin}")
    return replace(
        base,
        reward=values[REWARD],
        reward_se=values[REWARD_SE],
        kl=values[KL],
        kl_se=values[KL_SE],
        reference_reward=values[REFERENCE],
    )


def _validation_rows(path: Path) -> list[tuple[int | None, dict[str, str]]]:
    """The CSVLogger rows holding `val/reward` or `val/kl`, merged per step (a later value wins), in step order.

    The step is `val/step` where logged (the global step of the weights sampled; Lightning's own `step` column
    of a validation inside `fit` is one less, and the final validation after `fit` repeats the last one)."""
    by_step: dict[int | None, dict[str, str]] = {}
    with path.open(newline="") as file:
        for row in csv.DictReader(file):
            if not (row.get(REWARD) or row.get(KL)):
                continue
            step = _optional_int(row.get(STEP) or row.get("step"))
            merged = by_step.setdefault(step, {})
            merged.update({key: value for key, value in row.items() if key and value not in (None, "")})
    rows = [(step, values) for step, values in by_step.items() if values.get(REWARD) and values.get(KL)]
    return sorted(rows, key=lambda item: -1 if item[0] is None else item[0])


def _series(choices: dict[str, Any], config: dict[str, Any]) -> str:
    """`choices.loss`, else the class name of `config.loss._target_` lower-cased, else `?`."""
    if choices.get("loss"):
        return str(choices["loss"])
    target = as_mapping(config.get("loss")).get("_target_")
    return str(target).rsplit(".", 1)[-1].lower() if target else "?"


def as_mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _optional_float(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)  # summary.json writes NaN and inf as strings
    except (TypeError, ValueError):
        raise ValueError(f"not a number: {value!r}") from None


def _optional_int(value: Any) -> int | None:
    number = _optional_float(value)
    return None if number is None or not math.isfinite(number) else int(number)


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else value


def _natural_key(path: Path) -> list[tuple[int, int | str]]:
    return [(0, int(part)) if part.isdigit() else (1, part) for part in path.parts]


def hydra_value(path: Path) -> str:
    """`path` as a Hydra override value: quoted unless it is plain characters."""
    text = str(path)
    if re.fullmatch(r"[A-Za-z0-9_./\-]+", text):
        return text
    return "'" + text.replace("'", "\\'") + "'"


if __name__ == "__main__":  # the command of earlier versions
    print("error: the frontier command is now: python -m dpo_lightning.cli.frontier", file=sys.stderr)
    sys.exit(2)
