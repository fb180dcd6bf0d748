"""Sweeps (`python train.py -m …`): one row per job in `<sweep folder>/sweep_summary.csv`, a table at the end,
and failed jobs that neither vanish nor stop the others.

- `run_sweep_job` runs one job of a multirun: a failure is logged and recorded in the job's `summary.json`
  (by `run.run`) instead of raised, so every launcher and sweeper goes on with the other jobs; it returns the
  job's objective (`optimized_metric`) for sweepers such as Optuna.
- `SweepSummary`, a Hydra callback (conf/hydra/default.yaml), reads every job folder at the end of the multirun,
  writes the CSV and prints the table; `finish_sweep` gives the command exit status 1 when any job did not
  complete (and summarizes a sweep that Hydra aborted before its end).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from dpo_lightning.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SUMMARY_FILE = "sweep_summary.csv"
# Final metrics first in the CSV and shown in the printed table (the CSV also holds every other final metric).
HEADLINE_METRICS = ("val/loss", "val/rewards/accuracies", "val/reward", "val/kl", "train/pairs_per_s")
COLUMNS = ("job", "status", "error", "overrides", "run_folder")
TABLE_ERROR_WIDTH = 160  # characters of an error shown in the printed table (the CSV holds all of it)


def objective(summary: dict[str, Any], metric: str | None) -> float | None:
    """The final value of `metric` in a job's summary, or None: a job that did not complete, no metric named,
    or one the job did not log or logged as NaN/inf (each but the first two logged as an error)."""
    if metric is None or summary.get("status") != "completed":
        return None
    metrics = summary.get("metrics") or {}
    if metric not in metrics:
        log.error("error: optimized_metric: this run has no final %r; it has: %s", metric, ", ".join(sorted(metrics)))
        return None
    value = float(metrics[metric])  # summary.json writes NaN and inf as strings
    if not math.isfinite(value):
        log.error("error: optimized_metric: %s is %s in this run", metric, value)
        return None
    return value


def run_sweep_job(train: Callable[[], dict[str, Any]], metric: str | None) -> float | None:
    """Run one job of a multirun (`train` returns its summary): an exception is logged — one line for a config
    or data error, with its traceback otherwise — and not raised, so the sweep's other jobs still run (`run.run`
    has recorded it in the job's summary.json). Returns `objective(summary, metric)`, None for a failed job:
    Optuna counts that trial as failed. KeyboardInterrupt still stops the sweep."""
    try:
        summary = train()
    except (ConfigError, DataError) as error:
        log.error("error: %s", error)
        return None
    except Exception:
        log.exception("the job failed")
        return None
    return objective(summary, metric)


@dataclass
class JobRow:
    """One job of a sweep as its folder records it."""

    folder: Path  # the job's run folder
    job: int | None  # Hydra's job number (None: the folder has no .hydra/hydra.yaml)
    overrides: list[str]  # the job's command-line overrides (.hydra/overrides.yaml)
    status: str  # summary.json's status (completed / failed / interrupted); failed without a summary.json
    error: str  # the error on one line ("" for a completed job)
    metrics: dict[str, Any] = field(default_factory=dict)  # summary.json's final metrics


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _read_job(folder: Path) -> JobRow:
    hydra_dir = folder / ".hydra"
    job: int | None = None
    overrides: list[str] = []
    if (hydra_dir / "hydra.yaml").is_file():
        job = OmegaConf.select(OmegaConf.load(hydra_dir / "hydra.yaml"), "hydra.job.num", default=None)
    if (hydra_dir / "overrides.yaml").is_file():
        overrides = [str(item) for item in OmegaConf.to_container(OmegaConf.load(hydra_dir / "overrides.yaml"))]
    row = JobRow(folder, job, overrides, "failed", "")
    try:
        summary = json.loads((folder / "summary.json").read_text())
    except FileNotFoundError:
        row.error = f"no summary.json: the job's process ended before writing it (killed?); see {folder / 'train.log'}"
        return row
    except (OSError, ValueError) as error:
        row.error = f"summary.json: {error}"
        return row
    row.status = str(summary.get("status", "unknown"))
    row.metrics = dict(summary.get("metrics") or {})
    if row.status != "completed":
        row.error = _one_line(summary.get("error") or f"status {row.status}, no error recorded")
    return row


def collect_jobs(sweep_dir: Path) -> list[JobRow]:
    """Every job folder under `sweep_dir` (one holding `.hydra/hydra.yaml` or `summary.json`), in job order."""
    markers = [*sweep_dir.rglob(".hydra/hydra.yaml"), *sweep_dir.rglob("summary.json")]
    folders = {path.parent.parent if path.parent.name == ".hydra" else path.parent for path in markers}
    rows = [_read_job(folder) for folder in folders if folder != sweep_dir]
    return sorted(rows, key=lambda row: (row.job is None, row.job or 0, str(row.folder)))


def metric_columns(rows: Iterable[JobRow], metric: str | None = None) -> list[str]:
    """The headline metrics and `metric` (the sweep's objective), then every other final metric, sorted."""
    first = [*HEADLINE_METRICS, *([metric] if metric and metric not in HEADLINE_METRICS else [])]
    others = sorted({name for row in rows for name in row.metrics} - set(first))
    return first + others


def write_csv(rows: Sequence[JobRow], sweep_dir: Path, metric: str | None = None) -> Path:
    """`<sweep_dir>/sweep_summary.csv`: job, status, error, overrides (space-separated), run_folder (relative to
    `sweep_dir`), then one column per final metric (empty where a job has none)."""
    path = sweep_dir / SUMMARY_FILE
    metrics = metric_columns(rows, metric)
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow([*COLUMNS, *metrics])
        for row in rows:
            writer.writerow(
                [
                    "" if row.job is None else row.job,
                    row.status,
                    row.error,
                    " ".join(row.overrides),
                    row.folder.relative_to(sweep_dir).as_posix(),
                    *(row.metrics.get(name, "") for name in metrics),
                ]
            )
    return path


def _cell(value: Any) -> str:
    if value in (None, ""):
        return "-"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{number:.4g}"


def format_table(rows: Sequence[JobRow], metric: str | None = None) -> str:
    """The jobs as a text table — job, status, the headline metrics any job has, the overrides that differ
    between jobs (all of them for a single job) — then each failed job's error."""
    shared = set.intersection(*(set(row.overrides) for row in rows)) if len(rows) > 1 else set()
    metrics = [name for name in metric_columns([], metric) if any(name in row.metrics for row in rows)]
    header = ["job", "status", *metrics, "overrides"]
    body = [
        [
            "-" if row.job is None else str(row.job),
            row.status,
            *(_cell(row.metrics.get(name)) for name in metrics),
            " ".join(item for item in row.overrides if item not in shared) or "-",
        ]
        for row in rows
    ]
    widths = [max(len(line[column]) for line in [header, *body]) for column in range(len(header))]
    widths[-1] = 0  # the overrides, last: not padded
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)) for line in [header, *body]]
    failed = [row for row in rows if row.status != "completed"]
    if failed:
        lines.append(f"not completed ({len(failed)}):")
        for row in failed:
            error = row.error if len(row.error) <= TABLE_ERROR_WIDTH else row.error[: TABLE_ERROR_WIDTH - 1] + "…"
            lines.append(f"  {row.folder.name if row.job is None else f'job {row.job}'}: {error}")
    return "\n".join(lines)


def summarize(sweep_dir: Path, metric: str | None = None) -> list[JobRow]:
    """Write `sweep_summary.csv` for the jobs under `sweep_dir` and print the table; returns the rows."""
    rows = collect_jobs(sweep_dir)
    path = write_csv(rows, sweep_dir, metric)
    statuses = Counter(row.status for row in rows)
    counts = ", ".join(f"{count} {status}" for status, count in sorted(statuses.items()))
    print(f"\nsweep {sweep_dir}: {len(rows)} jobs ({counts or 'none found'}) · {path}")
    if rows:
        print(format_table(rows, metric))
    sys.stdout.flush()
    return rows


_sweep: SweepSummary | None = None  # the multirun of this process, from its start until `finish_sweep`


class SweepSummary(Callback):
    """Hydra callback: at the end of a multirun of `job_name` (train.py's jobs, which write summary.json),
    `summarize` its sweep folder. The command line then calls `finish_sweep` for its exit status."""

    def __init__(self, job_name: str = "train") -> None:
        self.job_name = job_name
        self.sweep_dir: Path | None = None
        self.metric: str | None = None
        self.rows: list[JobRow] | None = None  # once summarized

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _sweep
        if config.hydra.job.name != self.job_name:
            return
        self.sweep_dir = Path(str(config.hydra.sweep.dir))
        self.metric = OmegaConf.select(config, "optimized_metric", default=None)
        _sweep = self

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self.summarize()

    def summarize(self) -> list[JobRow]:
        """`summarize` the sweep folder once (no rows for another command's multirun)."""
        if self.rows is None and self.sweep_dir is not None:
            self.sweep_dir.mkdir(parents=True, exist_ok=True)
            self.rows = summarize(self.sweep_dir, self.metric)
        return self.rows or []


def finish_sweep() -> int:
    """After a command: 1 when its multirun had a job that did not complete, else 0 (also without a multirun).
    A sweep that Hydra aborted (e.g. a launcher that lost a job) never reached `on_multirun_end`: it is
    summarized here."""
    global _sweep
    sweep, _sweep = _sweep, None
    if sweep is None:
        return 0
    return int(any(row.status != "completed" for row in sweep.summarize()))
