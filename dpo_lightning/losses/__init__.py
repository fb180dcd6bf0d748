"""Preference objectives: one file per loss, each a pure function of log-probs plus an `Objective` wrapper.

A conf option `conf/loss/<name>.yaml` instantiates the wrapper with `_target_: dpo_lightning.losses.<file>.<Class>`.
"""

from dpo_lightning.losses.base import LossOutput, Objective, PairLogps, RankingLogps, TokenLogps

__all__ = ["LossOutput", "Objective", "PairLogps", "RankingLogps", "TokenLogps"]
