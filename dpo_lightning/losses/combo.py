"""`loss=combo`: a weighted sum of objectives, e.g. MPO (Wang et al. 2024): 0.8·DPO + 0.2·BCO + 1.0·SFT.

    loss = Σ_k w_k · loss_k          per pair, over the configured parts

Each part is a configured `Objective` (any `loss/` option's `_target_` and arguments). The rewards logged
are those of the first part that defines rewards; every part's mean loss is logged as `<name>/loss` (plus
its own terms under `<name>/…`), so a sweep can see which term moves.
"""

from __future__ import annotations

from collections.abc import Sequence

from dpo_lightning.errors import ConfigError
from dpo_lightning.losses.base import LossOutput, Objective, PairLogps


class Combo(Objective):
    """Weighted sum of `parts`; needs a reference if any part does.

    Args:
        parts: the objectives combined.
        weights: one weight ≥ 0 per part (not all zero).
    """

    name = "combo"

    def __init__(self, parts: Sequence[Objective], weights: Sequence[float]) -> None:
        if not parts:
            raise ConfigError("loss.parts", "needs at least one objective")
        if len(weights) != len(parts):
            raise ConfigError("loss.weights", f"needs one weight per part: {len(parts)} parts, {len(weights)} weights")
        if any(not weight >= 0 for weight in weights) or not any(weight > 0 for weight in weights):
            raise ConfigError("loss.weights", f"must be ≥ 0 and not all 0, got {list(weights)}")
        names = [part.name for part in parts]
        if len(set(names)) != len(names):
            raise ConfigError("loss.parts", f"each objective may appear once, got {names}")
        rankings = [part.name for part in parts if part.takes_rankings]
        if rankings:
            raise ConfigError("loss.parts", f"{rankings[0]} takes whole rankings; combo sums per-pair losses")
        self.parts, self.weights = list(parts), [float(weight) for weight in weights]
        self.needs_reference = any(part.needs_reference for part in self.parts)
        self.reference_free_ok = all(part.reference_free_ok or not part.needs_reference for part in self.parts)
        self.needs_tokens = any(part.needs_tokens for part in self.parts)

    def observe(self, policy: PairLogps, reference: PairLogps | None) -> None:
        """Each part observes the training batch (a stateful part, e.g. BCO's δ, updates its state)."""
        for part in self.parts:
            part.observe(policy, reference if part.needs_reference else None)

    def __call__(self, policy: PairLogps, reference: PairLogps | None) -> LossOutput:
        outputs = [part(policy, reference if part.needs_reference else None) for part in self.parts]
        losses = sum(weight * output.losses for weight, output in zip(self.weights, outputs, strict=True))
        with_rewards = [output for output in outputs if output.chosen_rewards is not None]
        metrics = {}
        for part, output in zip(self.parts, outputs, strict=True):
            metrics[f"{part.name}/loss"] = output.losses.detach().mean()
            metrics |= {f"{part.name}/{key}": value for key, value in output.metrics.items()}
        first = with_rewards[0] if with_rewards else LossOutput(losses)
        return LossOutput(losses, first.chosen_rewards, first.rejected_rewards, metrics)
