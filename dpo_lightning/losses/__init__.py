"""Preference objectives: one file per loss, each a pure function of log-probs plus an `Objective` wrapper.

A conf option `conf/loss/<name>.yaml` instantiates the wrapper with `_target_`.
"""

from dpo_lightning.losses.base import LossOutput, Objective, PairLogps
from dpo_lightning.losses.dpo import DPO, dpo_loss
from dpo_lightning.losses.sft import SFT, sft_loss

__all__ = ["DPO", "SFT", "LossOutput", "Objective", "PairLogps", "dpo_loss", "sft_loss"]
