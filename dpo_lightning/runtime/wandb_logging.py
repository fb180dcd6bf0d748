"""`logger=wandb`: Lightning's WandbLogger that never prompts or hangs.

`mode=auto` goes online only when credentials exist (WANDB_API_KEY or a ~/.netrc entry for the server) and
the server answers a TCP connect within a few seconds; otherwise the run is logged offline into the run
folder, to sync later with `wandb sync`. The API key is never written anywhere by this project.
"""

from __future__ import annotations

import netrc
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig

from dpo_lightning.errors import ConfigError

MODES = ("auto", "online", "offline", "disabled")
DEFAULT_SERVER = "https://api.wandb.ai"
TARGET = f"{__name__}.wandb_logger"  # conf/logger/wandb.yaml's _target_


def _has_credentials(host: str) -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def _reachable(url: str, timeout_s: float = 3.0) -> bool:
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def resolve_mode(mode: str) -> str:
    """`auto` → `online` or `offline` as described above; other modes pass through."""
    if mode not in MODES:
        raise ConfigError("logger.mode", f"must be one of {', '.join(MODES)}, got {mode!r}")
    if mode != "auto":
        return mode
    server = os.environ.get("WANDB_BASE_URL", DEFAULT_SERVER)
    host = urlparse(server).hostname or ""
    return "online" if _has_credentials(host) and _reachable(server) else "offline"


def wandb_logger(
    project: str,
    save_dir: str,
    mode: str = "auto",
    entity: str | None = None,
    name: str | None = None,
    group: str | None = None,
    tags: list[str] | None = None,
    continue_run: str | None = None,
) -> WandbLogger:
    """A WandbLogger writing into `save_dir`/wandb, in the mode `resolve_mode` picks. `continue_run` (the run's
    `resume` setting): when set and `save_dir` holds an earlier W&B run, log into that run again (same id)."""
    resolved = resolve_mode(mode)
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    previous = previous_run_id(save_dir) if continue_run is not None else None
    return WandbLogger(
        id=previous,
        resume="allow" if previous else None,
        project=project,
        entity=entity,
        name=name,
        group=group,
        tags=list(tags or []),
        save_dir=save_dir,
        offline=resolved == "offline",
        mode=resolved,
        settings={"silent": True, "init_timeout": 60},
    )


def previous_run_id(save_dir: str | Path) -> str | None:
    """The id of the latest W&B run in `save_dir`/wandb: its `latest-run` link names `[offline-]run-<time>-<id>`."""
    latest = Path(save_dir) / "wandb" / "latest-run"
    return latest.resolve().name.rsplit("-", 1)[-1] if latest.exists() else None


def name_sweep_run(logger: DictConfig | None, sweep_dir: str, overrides: str) -> None:
    """A multirun job's W&B run joins its sweep: `logger.group` ← the sweep folder (`hydra.sweep.dir`) and
    `logger.name` ← the job's overrides (Hydra's `job.override_dirname`, e.g. `beta=0.5,loss=ipo`), each only
    where the config leaves it null. Other loggers are left alone."""
    if logger is None or logger.get("_target_") != TARGET:
        return
    if logger.group is None:
        logger.group = sweep_dir
    if logger.name is None and overrides:
        logger.name = overrides
