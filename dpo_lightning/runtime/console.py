"""What a run shows and writes of its config, and its progress bar.

- `print_config_tree`: the resolved, redacted config (`secrets.redacted_config`) as a rich tree at the start of a
  run; `save_resolved_config`: the same config as `<run folder>/config.yaml` (Hydra's `.hydra/config.yaml` keeps
  the unresolved one, redacted by `secrets.RedactHydraOutput`).
- `progress_bar`: Lightning's RichProgressBar (`progress_bar: rich`, the default) or its TQDM bar (`tqdm`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import rich
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from rich.syntax import Syntax
from rich.text import Text
from rich.tree import Tree

from dpo_lightning.errors import ConfigError
from dpo_lightning.runtime.secrets import redacted_config

# Config groups shown first in the tree, in the defaults-list order of conf/config.yaml.
TREE_ORDER: tuple[str, ...] = ("task", "model", "loss", "reference", "optimizer", "trainer", "logger")
PROGRESS_BARS: tuple[str, ...] = ("rich", "tqdm")


def config_tree(cfg: DictConfig) -> Tree:
    """The resolved, redacted config as a rich Tree: one branch per top-level key, the groups first
    (TREE_ORDER), then the other keys in config order."""
    plain = redacted_config(cfg)
    tree = Tree("config", style="dim", guide_style="dim")
    for key in [*(k for k in TREE_ORDER if k in plain), *(k for k in plain if k not in TREE_ORDER)]:
        value = plain[key]
        if isinstance(value, dict):
            tree.add(key, style="bold").add(_yaml(value))
        else:
            tree.add(_yaml({key: value}))
    return tree


def _yaml(value: dict[str, Any]) -> Text:
    text = Syntax("", "yaml", background_color="default").highlight(OmegaConf.to_yaml(value))
    text.rstrip()
    return text


@rank_zero_only
def print_config_tree(cfg: DictConfig) -> None:
    """Print the resolved config as a tree on stdout (rank 0; plain text when stdout is not a terminal)."""
    console = rich.get_console()
    tree = config_tree(cfg)
    console.print(tree, width=min(console.measure(tree).maximum, console.width))  # no padding to the full width


@rank_zero_only
def save_resolved_config(cfg: DictConfig, folder: Path) -> Path | None:
    """Write the resolved, redacted config to `<folder>/config.yaml` and return its path (rank 0; None elsewhere)."""
    path = Path(folder) / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(OmegaConf.to_yaml(redacted_config(cfg)))
    return path


def progress_bar(cfg: DictConfig) -> RichProgressBar | None:
    """The progress-bar callback `progress_bar` asks for: a RichProgressBar for `rich`; None for `tqdm`
    (Lightning's default bar) and whenever `trainer.enable_progress_bar` is false (no bar at all).

    On a terminal the rich bar redraws in place; when stdout is a file or a CI log, rich draws nothing while
    it runs and prints each finished bar once (tqdm would write hundreds of carriage-return updates there).
    """
    choice = cfg.progress_bar
    if choice not in PROGRESS_BARS:
        raise ConfigError("progress_bar", f"must be one of {', '.join(PROGRESS_BARS)}, got {choice!r}")
    if choice == "tqdm" or not cfg.trainer.get("enable_progress_bar", True):
        return None
    return RichProgressBar(leave=True)
