"""The optimizer and learning-rate schedule of every trainer: an `optimizer/` config and a linear warm-up."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from hydra.utils import instantiate


def optimizer_with_warmup(config: Mapping[str, Any], parameters: Iterable[torch.nn.Parameter]) -> dict[str, Any]:
    """What `configure_optimizers` returns for an `optimizer/` config: the `_target_` optimizer with its arguments
    over `parameters`, and the linear warm-up `lr · min(1, (step + 1) / (warmup_steps + 1))` (the reference
    implementation's), stepped every optimizer step.

    Args:
        config: `_target_` (an optimizer class), its arguments (`lr`, …) and `warmup_steps`, every key present.
        parameters: the parameters to optimize (the trainable ones only).
    """
    options = dict(config)
    warmup_steps = options.pop("warmup_steps")
    optimizer = instantiate(options, params=list(parameters))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / (warmup_steps + 1)))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
