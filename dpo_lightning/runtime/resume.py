"""`resume=`: continue an interrupted run in its own folder, from its `checkpoints/last.ckpt`.

    resume=auto      rerun the same command: it continues the latest unfinished run of that command (same
                     overrides, no `summary.json` saying "completed", a `last.ckpt`) under `outputs/`, or starts
                     a new run if there is none
    resume=<folder>  continue that run folder (it must hold checkpoints/last.ckpt, or, algorithm=iterative, rounds)

A run folder is chosen by Hydra before any of our code runs, so `resume_arguments` rewrites the command line
first: it adds `hydra.run.dir=<folder>` (a single run whose folder the user did not set). Inside the run,
`resume_checkpoint` finds the folder's `last.ckpt`. In a multirun, set `hydra.sweep.dir` to the interrupted
sweep's folder: each job resumes from its own `<sweep dir>/<job>/checkpoints/last.ckpt`.

The checkpoint restores weights, optimizer and scheduler state, loop counters, the reference (`reference=sync`),
the data position (`PreferenceDataModule.state_dict`: the next batch of the epoch, streaming too) and the RNG
states (`RandomState`), so that on the CPU with the same settings the resumed run ends with the same weights,
bit for bit, as one never interrupted.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import OverrideParseException
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states

from dpo_lightning.errors import ConfigError
from dpo_lightning.runtime.secrets import redact_overrides

log = logging.getLogger(__name__)

LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"
OUTPUTS = Path("outputs")  # where conf/hydra/default.yaml puts run folders: outputs/<date>/<time>
_NOT_THE_COMMAND = ("resume", "hydra.run.dir")  # overrides that may differ between a run and its resumption


def _overrides(arguments: list[str]) -> dict[str, str]:
    """Command-line overrides as {key: value text}; arguments that are not overrides (`-m`, `--cfg`) are left out."""
    parser, found = OverridesParser.create(), {}
    for argument in arguments:
        try:
            (override,) = parser.parse_overrides([argument])
        except OverrideParseException:
            continue
        found[override.key_or_group] = argument.split("=", 1)[1] if "=" in argument else ""
    return found


def _same_command(folder: Path, overrides: dict[str, str]) -> bool:
    saved = folder / ".hydra" / "overrides.yaml"
    if not saved.is_file():
        return False
    previous = _overrides(yaml.safe_load(saved.read_text()) or [])  # as written: secrets redacted
    drop = lambda found: {k: v for k, v in found.items() if k not in _NOT_THE_COMMAND}  # noqa: E731
    return drop(previous) == drop(_overrides(redact_overrides(f"{k}={v}" for k, v in overrides.items())))


def _resumable(folder: Path) -> bool:
    """A run folder with a last.ckpt, or an iterative run's folder (its rounds resume each from their own)."""
    return (folder / LAST_CHECKPOINT).is_file() or (folder / "round_1").is_dir()


def _unfinished(folder: Path) -> bool:
    """A resumable run folder whose summary (if it got to write one) does not say it completed."""
    if not _resumable(folder):
        return False
    summary = folder / "summary.json"
    return not summary.is_file() or json.loads(summary.read_text()).get("status") != "completed"


def latest_unfinished_run(overrides: dict[str, str], outputs: Path = OUTPUTS) -> Path | None:
    """The newest `outputs/<date>/<time>` folder of this command (same overrides) that did not complete."""
    candidates = [folder for folder in outputs.glob("*/*") if folder.is_dir()]
    for folder in sorted(candidates, key=lambda f: (f.parent.name, f.name), reverse=True):
        if _same_command(folder, overrides) and _unfinished(folder):
            return folder
    return None


def resume_arguments(arguments: list[str], outputs: Path = OUTPUTS) -> list[str]:
    """The command line with `hydra.run.dir=<folder>` added where `resume=` names or finds one (see the module
    docstring). Unchanged for a multirun, a run whose folder is set, or `resume=auto` with nothing to resume."""
    overrides = _overrides(arguments)
    resume = overrides.get("resume", "null")
    if resume in ("null", "") or "hydra.run.dir" in overrides or {"-m", "--multirun"} & set(arguments):
        return arguments
    if resume == "auto":
        folder = latest_unfinished_run(overrides, outputs)
        return arguments if folder is None else [*arguments, f"hydra.run.dir={folder}"]
    folder = Path(resume).expanduser()
    if not _resumable(folder):
        raise ConfigError("resume", f"{folder} is not a run folder with {LAST_CHECKPOINT} (or rounds to continue)")
    return [*arguments, f"hydra.run.dir={folder}"]


def resume_checkpoint(resume: str | None, output_dir: Path) -> Path | None:
    """The checkpoint this run continues from: `<run folder>/checkpoints/last.ckpt` when `resume` is set and the
    file exists; None for a fresh start (`resume=auto` with nothing to resume)."""
    if resume is None:
        return None
    checkpoint = output_dir / LAST_CHECKPOINT
    for leftover in checkpoint.parent.glob("*.tmp-*"):  # a save the interrupted run never finished
        log.info("removing %s, an unfinished checkpoint write", leftover)
        leftover.unlink()
    if checkpoint.is_file():
        return checkpoint
    if resume == "auto":
        return None
    raise ConfigError("resume", f"{output_dir} has no {LAST_CHECKPOINT} to resume from")


class RandomState(L.Callback):
    """Keeps the RNG states (torch, numpy, Python, CUDA) in checkpoints and restores them just before the first
    resumed training batch — after the data loaders have started, which draw a seed of their own."""

    def __init__(self) -> None:
        self.loaded: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        states = _collect_rng_states(include_cuda=torch.cuda.is_available())
        name, keys, *rest = states["numpy"]  # its key array as a list: no numpy object to unpickle (trainer=fsdp)
        return {**states, "numpy": (name, keys.tolist(), *rest)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        name, keys, *rest = state_dict["numpy"]
        self.loaded = {**state_dict, "numpy": (name, np.asarray(keys, dtype=np.uint32), *rest)}

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.loaded is not None:
            _set_rng_states(self.loaded)
            self.loaded = None
