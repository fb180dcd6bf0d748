"""RewardModelModule: a Bradley–Terry reward model r(x, y) trained on preference pairs (or rankings), by Lightning.

    batch ─► sequence_rewards(classifier) [S] ─► r[pair_index] ─► bradley_terry_loss(r_w, r_l) [Q] ─► mean

The network is the policy's architecture under a one-label sequence-classification head
(`AutoModelForSequenceClassification`, `num_labels=1`): pretrained weights (`name_or_path`, `init_from`: an SFT
model) get a new `score` head; the random-init `tiny` model is built from the same `architecture` + `config` and
`init_seed`, so its body is the tiny policy's. Batches are the DPO trainer's (`PreferenceDataModule`, any layout;
a ranked batch's `pair_index` pairs as `data.ranking_pairs` chose them), and every response is scored in one
forward.

Each response's reward is read at its last token before the appended EOS (a truncated response: at its last
token), which is where the exported model, given the text `prompt + response` (`export`, then
`eval.classifier.ClassifierScorer(folder, positive_label=None)`), reads it: the arithmetic, and what no position
can fix (a BOS the scorer's tokenizer adds, merges across the prompt–response boundary), is in
`models/sequence_rewards.py`.

Metrics, each a mean over the Q pairs of a batch (training) or over every validation pair of every rank
(validation: Σ and count added over ranks; placeholder batches add nothing):
    loss      mean Bradley–Terry loss (with the centring term, if any)
    accuracy  share of pairs with r_w > r_l strictly: a tie counts as wrong (0), so equal rewards score 0, not 0.5
    margin    mean r_w − r_l
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from transformers import AutoModelForSequenceClassification, PreTrainedModel, PreTrainedTokenizerBase

from dpo_lightning.data.collate import Batch
from dpo_lightning.losses.bradley_terry import bradley_terry_loss
from dpo_lightning.models.loading import build_model, compile_blocks, load_tokenizer, model_config
from dpo_lightning.models.sequence_rewards import sequence_rewards
from dpo_lightning.training.metrics import Mean, MetricTotals
from dpo_lightning.training.optim import optimizer_with_warmup

log = logging.getLogger(__name__)

DEFAULT_OPTIMIZER = {"_target_": "torch.optim.AdamW", "lr": 1e-4, "warmup_steps": 0}  # TRL RewardTrainer's lr


def reward_metrics(chosen: torch.Tensor, rejected: torch.Tensor, losses: torch.Tensor) -> dict[str, Mean]:
    """The batch's metrics (module docstring) from its [Q] chosen and rejected rewards and [Q] losses, each a mean
    over the Q pairs."""
    pairs = losses.numel()
    chosen, rejected = chosen.detach(), rejected.detach()
    return {
        "loss": Mean(losses.detach().mean(), pairs),
        "accuracy": Mean((chosen > rejected).float().mean(), pairs),
        "margin": Mean((chosen - rejected).mean(), pairs),
    }


class RewardModelModule(L.LightningModule):
    """Trains a one-label sequence classifier as a Bradley–Terry reward model.

        RewardModelModule(model="tiny", optimizer={"lr": 1e-4}, center_coefficient=0.01)

    Args:
        model: the network: a `model/` config (`models.loading.build_model`, with a sequence-classification head;
            `compile` compiles its blocks), `"tiny"`, a hub id or local folder of a causal LM
            (`models.loading.model_config`), or a one-label `…ForSequenceClassification` to train as it is.
        optimizer: a `_target_` optimizer class and its arguments, plus `warmup_steps` for the linear learning-rate
            warm-up (missing keys: AdamW, lr 1e-4, no warm-up).
        margin: m in −log σ(r_w − r_l − m): the chosen reward must beat the rejected one by m (0: the plain loss;
            one value for every pair — TRL reads a per-pair margin column, which the batches here do not carry).
        center_coefficient: c of the centring term c · (r_w + r_l)² (`bradley_terry_loss`; 0: none, TRL suggests
            0.01).
        eos_token_id: the EOS the tokenizer appends to every response; None: the tokenizer's (`model.pad_token`
            and `model.tokenizer` as `load_tokenizer` reads them), or for a given model its config's.
    """

    def __init__(
        self,
        model: Mapping[str, Any] | str | PreTrainedModel,
        optimizer: Mapping[str, Any] | None = None,
        center_coefficient: float = 0.0,
        margin: float = 0.0,
        eos_token_id: int | None = None,
    ) -> None:
        super().__init__()
        if not center_coefficient >= 0:
            raise ValueError(f"center_coefficient must be ≥ 0, got {center_coefficient}")
        given_model = model if isinstance(model, torch.nn.Module) else None
        if given_model is None:
            model = model_config(model) if isinstance(model, str) else dict(model)
        described = f"{type(model).__module__}.{type(model).__qualname__}" if given_model is not None else model
        self.save_hyperparameters(  # checkpoints keep them (plain JSON values)
            {
                "model": described,
                "optimizer": None if optimizer is None else dict(optimizer),
                "center_coefficient": center_coefficient,
                "margin": margin,
                "eos_token_id": eos_token_id,
            },
            logger=False,
        )
        self.model_settings: dict[str, Any] = {} if given_model is not None else model
        self.optimizer_config = {**DEFAULT_OPTIMIZER, **(optimizer or {})}
        self.center_coefficient, self.margin = center_coefficient, margin
        self.eos_token_id = eos_token_id
        self.model: PreTrainedModel | None = given_model
        self.on_validation_epoch_start()  # the validation metric totals

    def configure_model(self) -> None:
        """Build the classifier once (the tiny model: seeded as the tiny policy), with the tokenizer's pad token in
        its config (what its own forward pools by) and the EOS its responses end with."""
        if self.model is None:
            self.model = build_model(self.model_settings, AutoModelForSequenceClassification, num_labels=1)
            tokenizer = load_tokenizer(self.model_settings)
            self.model.config.pad_token_id = tokenizer.pad_token_id
            if self.eos_token_id is None:
                self.eos_token_id = tokenizer.eos_token_id
            if self.model_settings.get("compile", False):
                compile_blocks(self.model, self.model_settings.get("block_class"))
        if self.model.config.num_labels != 1:
            raise ValueError(
                f"a reward model has one label; {type(self.model).__name__} has {self.model.config.num_labels}"
            )
        if self.eos_token_id is None:
            eos = self.model.config.eos_token_id
            if not isinstance(eos, int):
                raise ValueError(f"the model's config names no single EOS token ({eos!r}): pass eos_token_id")
            self.eos_token_id = eos
        if self.device_mesh is not None:
            raise NotImplementedError("a reward model does not train sharded (trainer=fsdp) yet")

    def rewards(self, batch: Batch) -> torch.Tensor:
        """[S] fp32 reward of each of the batch's sequences (any layout; `models.sequence_rewards`)."""
        return sequence_rewards(self.model, batch, self.eos_token_id)

    def _step(self, batch: Batch, stage: str) -> torch.Tensor:
        rewards = self.rewards(batch)  # [S]
        better, worse = batch.pair_index  # [Q], [Q]
        margin = torch.full_like(rewards[better], self.margin) if self.margin else None
        losses = bradley_terry_loss(rewards[better], rewards[worse], margin, self.center_coefficient)
        metrics = reward_metrics(rewards[better], rewards[worse], losses)
        if stage == "val":
            self.validation_totals.add(metrics, counted=not batch.placeholder, device=self.device)
        if batch.placeholder:  # a rank out of streaming data: same forward and backward, no effect, no metrics
            return 0.0 * losses.sum()
        if stage == "train":
            self.log_dict({f"train/{name}": mean.value for name, mean in metrics.items()}, batch_size=len(losses))
        return losses.mean() * batch.loss_weight  # its rank's share of the step (streaming DDP)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "val")

    def on_validation_epoch_start(self) -> None:
        self.validation_totals = MetricTotals()

    def on_validation_epoch_end(self) -> None:
        """Log val/<metric>: its mean over every validation pair of every rank (`MetricTotals`)."""
        means = self.validation_totals.means(self.trainer.strategy)
        if means:
            self.log_dict({f"val/{name}": value for name, value in means.items()})

    def configure_optimizers(self) -> dict:
        """The configured optimizer over the trainable parameters, with the linear warm-up of `optim`."""
        return optimizer_with_warmup(self.optimizer_config, (p for p in self.model.parameters() if p.requires_grad))

    def export(self, folder: str | Path, tokenizer: PreTrainedTokenizerBase) -> Path:
        """Save the reward model to `folder` (config, safetensors weights, tokenizer), loadable offline by
        `AutoModelForSequenceClassification.from_pretrained(folder)` (num_labels = 1) and usable as
        `ClassifierScorer(folder, positive_label=None)`; its config pads with the tokenizer's pad token.

        Warns (the scores of texts would then differ from the training rewards: `models/sequence_rewards.py`)
        if `tokenizer` adds special tokens to a text, which training never saw.
        """
        folder = Path(folder)
        added = [
            t for t in tokenizer("x")["input_ids"] if t not in tokenizer("x", add_special_tokens=False)["input_ids"]
        ]
        if added:
            log.warning(
                "the tokenizer adds special tokens %s to every text, which the reward model was trained without: "
                "scores of text (ClassifierScorer) differ from its training rewards",
                tokenizer.convert_ids_to_tokens(added),
            )
        self.model.config.pad_token_id = tokenizer.pad_token_id
        self.model.save_pretrained(folder)  # safetensors (transformers ≥ 5 writes no other format)
        tokenizer.save_pretrained(folder)
        return folder
