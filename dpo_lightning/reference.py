"""The frozen reference model π_ref of the DPO objective.

`FrozenReference` holds a copy of the initial policy: always in eval mode (dropout off, even after
`LightningModule.train()`), no parameter requires grad, forward only under `no_grad`. Its weights are not
written into checkpoints: the module rebuilds it from the same source on resume.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel

from dpo_lightning.data.collate import Batch
from dpo_lightning.logprobs import sequence_logprobs


class FrozenReference(nn.Module):
    """A frozen copy of a causal LM that only ever computes log-probs."""

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__()
        self.model = model.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> FrozenReference:
        """Stay in eval mode whatever the caller asks."""
        return super().train(False)

    @torch.no_grad()
    def logprobs(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """[2P] summed response log-probs and [2P] token counts, as `sequence_logprobs`."""
        return sequence_logprobs(self.model, batch)
