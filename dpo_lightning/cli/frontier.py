"""`python -m dpo_lightning.cli.frontier SWEEP_DIR [--per-validation] [--out DIR]`: the reward–KL frontier of a
sweep (`dpo_lightning.eval.frontier`), written as `frontier.csv` and `frontier.png`;
`python -m dpo_lightning.cli.frontier --run SWEEP_DIR -- <dpo-train overrides…>` runs the sweep first. When the runs
logged to W&B (`logger=wandb`), the plot also goes to W&B (`log_to_wandb`; `--no-wandb`: not).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dpo_lightning.errors import DataError
from dpo_lightning.eval.frontier import (
    KL,
    REWARD,
    as_mapping,
    collect_points,
    find_runs,
    format_table,
    frontier_title,
    hydra_value,
    write_frontier,
)
from dpo_lightning.runtime.wandb_logging import TARGET, resolve_mode


def wandb_settings(sweep_dir: Path) -> dict[str, Any] | None:
    """The W&B logger config (summary.json's `config.logger`) of the first run under `sweep_dir` that logged to
    W&B, or None. In a sweep its `group` is the sweep folder (`wandb_logging.name_sweep_run`)."""
    for folder in find_runs(sweep_dir):
        try:
            summary = json.loads((folder / "summary.json").read_text())
        except (OSError, ValueError):
            continue  # collect_points reports it
        logger = as_mapping(as_mapping(as_mapping(summary).get("config")).get("logger"))
        if logger.get("_target_") == TARGET:
            return logger
    return None


def log_to_wandb(png_path: Path, title: str, settings: dict[str, Any] | None) -> str | None:
    """Log the frontier image (key `frontier`) to the active W&B run, or else, given the runs' W&B `settings`
    (`wandb_settings`), to a new run named `frontier` in their project, entity and group, in the mode their
    `mode` resolves to (offline without credentials), with its files in `png_path`'s folder. Returns where it
    went, None when there is neither."""
    import wandb

    if wandb.run is None and settings is None:
        return None
    image = {"frontier": wandb.Image(str(png_path), caption=title)}
    if wandb.run is not None:
        wandb.run.log(image)
        return f"the active W&B run {wandb.run.name}"
    mode = resolve_mode(settings.get("mode") or "auto")
    with wandb.init(
        project=settings.get("project"),
        entity=settings.get("entity"),
        group=settings.get("group"),
        name="frontier",
        job_type="frontier",
        dir=str(png_path.parent),
        mode=mode,
        settings=wandb.Settings(silent=True, init_timeout=60),
    ) as run:
        run.log(image)
    return f"W&B run frontier ({mode}, project {settings.get('project')}, group {settings.get('group')})"


def sweep_command(sweep_dir: Path, overrides: Sequence[str]) -> list[str]:
    """`dpo-train -m <overrides> hydra.sweep.dir=<sweep_dir>`, as this interpreter's module."""
    return [
        sys.executable,
        "-m",
        "dpo_lightning.cli.train",
        "-m",
        *overrides,
        f"hydra.sweep.dir={hydra_value(sweep_dir)}",
    ]


def run_sweep(command: Sequence[str], cwd: Path | None = None) -> int:
    """Run `command`, streaming its output (stdout and stderr) line by line to stdout; return its exit status."""
    with subprocess.Popen(
        list(command), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
    return process.returncode


def main(
    argv: Sequence[str] | None = None,
    command_for: Callable[[Path, Sequence[str]], list[str]] = sweep_command,
) -> int:
    """The command line; `command_for(sweep_dir, overrides)` builds the `--run` command. Returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, overrides = argv[:split], argv[split + 1 :]
    parser = argparse.ArgumentParser(
        prog="python -m dpo_lightning.cli.frontier",
        description="Plot expected reward against KL(π ‖ π_ref) for the runs of a sweep.",
        epilog="--run SWEEP_DIR -- <overrides…> first runs `dpo-train -m <overrides…> hydra.sweep.dir=SWEEP_DIR`.",
    )
    parser.add_argument("sweep_dir", nargs="?", type=Path, help="a sweep folder (or a run folder)")
    parser.add_argument("--run", type=Path, metavar="SWEEP_DIR", help="run a train.py sweep into SWEEP_DIR first")
    parser.add_argument("--per-validation", action="store_true", help="one point per validation, not per run")
    parser.add_argument("--out", type=Path, help="where frontier.csv and frontier.png go (default: SWEEP_DIR)")
    parser.add_argument("--no-wandb", action="store_true", help="do not log the plot to W&B (see log_to_wandb)")
    args = parser.parse_args(argv)
    if (args.sweep_dir is None) == (args.run is None):
        parser.error("give SWEEP_DIR or --run SWEEP_DIR (one of them)")
    if overrides and args.run is None:
        parser.error("overrides after -- need --run SWEEP_DIR")

    sweep_dir: Path = args.sweep_dir or args.run
    if args.run is not None:
        sweep_dir = sweep_dir.resolve()
        status = run_sweep(command_for(sweep_dir, overrides))
        if status != 0:
            print(f"sweep exited with status {status}; the frontier uses the jobs that finished", file=sys.stderr)
    try:
        points = collect_points(sweep_dir, args.per_validation)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_table(points))
    if not any(point.plotted for point in points):
        print(f"error: {sweep_dir}: no run has {REWARD} and {KL} to plot", file=sys.stderr)
        return 2
    title = frontier_title(points)
    csv_path, png_path = write_frontier(points, args.out or sweep_dir, title)
    print(f"wrote {csv_path} and {png_path}")
    logged = None if args.no_wandb else log_to_wandb(png_path, title, wandb_settings(sweep_dir))
    if logged:
        print(f"logged {png_path.name} to {logged}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
