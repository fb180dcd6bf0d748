"""DPOLitModule: the trainable policy, the frozen reference and one objective, orchestrated by Lightning.

    batch ─► batch_for(policy) ─► token_logprobs(policy) [N] ─► sums [S] ──┐
                              └──► reference.logprobs (no_grad)      [S] ─┴─► pairs or rankings ─► objective(…)

Every response of the batch goes through the policy in one forward (the batch holds them all: chosen and
rejected, or a ranking's K). A pairwise objective gets `PairLogps` of the batch's `pair_index` pairs (a pair
batch's own pairs; a ranked batch's pairs chosen by `data.ranking_pairs`, each response computed once however
many pairs it is in); a ranking objective (`takes_rankings`) gets `RankingLogps` (a pair is a ranking of two).
The batch comes in the layout `data.layout` chose; `layout_support.batch_for` rebuilds it in the padded layout,
once per step for policy and reference, if the policy failed the 4-D-mask probe (one logged notice).
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import lightning as L
import torch
from transformers import PreTrainedModel

from dpo_lightning.data.collate import Batch
from dpo_lightning.instantiate import build
from dpo_lightning.losses.base import Objective, PairLogps, RankingLogps, TokenLogps
from dpo_lightning.models.layouts import batch_for
from dpo_lightning.models.loading import build_model, compile_blocks, model_config
from dpo_lightning.models.logprobs import check_supported, sum_per_sequence, token_logprobs
from dpo_lightning.models.reference import FrozenCopy, FrozenReference, Reference, ReferenceStrategy
from dpo_lightning.models.sharding import shard_causal_lm
from dpo_lightning.training.metrics import MetricTotals, preference_metrics, ranking_metrics
from dpo_lightning.training.optim import optimizer_with_warmup

REFERENCE_PREFIX = "reference."  # state-dict keys of the frozen reference, kept out of checkpoints
KL_REFERENCE_PREFIX = "kl_reference."  # state-dict keys of the evaluation-only copy, kept out too
DEFAULT_OPTIMIZER = {"_target_": "torch.optim.AdamW", "lr": 1e-6, "warmup_steps": 0}  # TRL DPOTrainer's lr

# The frozen reference is in eval mode on purpose; Lightning warns about any eval-mode module at fit start.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode", category=UserWarning)


def pair_logps(
    logps: torch.Tensor, num_tokens: torch.Tensor, batch: Batch, token_logps: torch.Tensor | None = None
) -> PairLogps:
    """[S] per-sequence values → PairLogps of the batch's Q `pair_index` pairs; with the [N] per-token log-probs
    (token-level objectives) only in a batch of pairs, whose sequence numbers `TokenLogps` follows."""
    better, worse = batch.pair_index  # [Q], [Q]
    tokens = TokenLogps(token_logps, batch.target_seqs) if token_logps is not None and not batch.ranked else None
    return PairLogps(logps[better], logps[worse], num_tokens[better], num_tokens[worse], tokens)


def _described(value: Any) -> Any:
    """A hyperparameter as a plain JSON value: a config as it is, a dataclass as its `_target_` and fields, any
    other object (a model, an objective) by its class."""
    if value is None or isinstance(value, (Mapping, str)):
        return dict(value) if isinstance(value, Mapping) else value
    if dataclasses.is_dataclass(value):
        return {"_target_": f"{type(value).__module__}.{type(value).__qualname__}", **dataclasses.asdict(value)}
    return f"{type(value).__module__}.{type(value).__qualname__}"


def ranking_logps(logps: torch.Tensor, num_tokens: torch.Tensor, batch: Batch) -> RankingLogps:
    """[S] per-sequence values → RankingLogps [P, K] (a pair batch: P rankings of two)."""
    return RankingLogps.from_sequences(logps, num_tokens, batch.ranks, batch.groups)


class DPOLitModule(L.LightningModule):
    """Trains a policy on preference pairs (or rankings) with one objective, against a reference π_ref.

    The Hydra run passes plain config values; from Python, objects do as well:

        DPOLitModule(model="gpt2", loss=DPO(beta=0.1), optimizer={"lr": 1e-6})

    Args:
        model: the policy: a `model/` config (see `dpo_lightning.models.loading.build_model`; `lean_logprobs`
            picks the policy's log-prob path, `compile` compiles its blocks), `"tiny"`, a hub id or a local
            folder (`models.loading.model_config`), or a `PreTrainedModel` to train as it is.
        loss: the objective: an `Objective` instance or a `loss/` config with its `_target_`.
        optimizer: a `_target_` optimizer class and its arguments, plus `warmup_steps` for the linear learning-rate
            warm-up (missing keys: AdamW, lr 1e-6, no warm-up).
        reference: how π_ref is held: a `ReferenceStrategy` or a `reference/` config with its `_target_`
            (default: `FrozenCopy()`, a frozen copy of the initial policy). Objectives that need no reference
            never build or run one.
        kl_reference: also make sure a reference model exists for evaluation (sampling, KL of samples):
            where the strategy or the objective holds none, keep a frozen copy of the initial policy
            (`ReferenceStrategy.evaluation_reference`); it never takes part in training.
    """

    def __init__(
        self,
        model: Mapping[str, Any] | str | PreTrainedModel,
        loss: Objective | Mapping[str, Any],
        optimizer: Mapping[str, Any] | None = None,
        reference: ReferenceStrategy | Mapping[str, Any] | None = None,
        kl_reference: bool = False,
    ) -> None:
        super().__init__()
        given_model = model if isinstance(model, torch.nn.Module) else None
        if given_model is None:
            model = model_config(model) if isinstance(model, str) else dict(model)
        hyperparameters = {"model": model, "loss": loss, "optimizer": optimizer, "reference": reference}
        # checkpoints keep them (plain JSON values); loggers get run()'s redacted config
        self.save_hyperparameters(
            {name: _described(value) for name, value in hyperparameters.items()} | {"kl_reference": kl_reference},
            logger=False,
        )
        self.model_settings: dict[str, Any] = {} if given_model is not None else model
        self.objective: Objective = loss if isinstance(loss, Objective) else build(loss, "loss")
        self.optimizer_config = {**DEFAULT_OPTIMIZER, **(optimizer or {})}
        if reference is None:
            reference = FrozenCopy()
        self.strategy: ReferenceStrategy = (
            reference if isinstance(reference, ReferenceStrategy) else build(reference, "reference")
        )
        self.policy: torch.nn.Module | None = given_model
        self._initial_policy_given = given_model is not None
        self.reference: Reference | None = None
        self.kl_reference: Reference | None = None  # evaluation only; None: `self.reference` serves
        self.trained_batch: Batch | None = None  # the latest training batch the policy saw
        self.on_validation_epoch_start()  # the validation metric totals

    def configure_model(self) -> None:
        """Build the policy (and the reference, if the objective needs one) once; under `trainer=fsdp`
        (a device mesh) shard the policy and a frozen reference model, each in its own FSDP2 units."""
        if self.reference is not None or self.kl_reference is not None or self._prepared:
            return
        self._prepared = True
        if self.policy is None:
            self.policy = build_model(self.model_settings)
        check_supported(self.policy)
        self.policy = self.strategy.prepare_policy(self.policy)
        if self.needs_reference:
            self.reference = self.strategy.reference(self.policy)
        if self.hparams.kl_reference and not self._holds_reference_model():
            self.kl_reference = self.strategy.evaluation_reference(self.policy)
        if self.model_settings.get("compile", False):  # after the reference copies: they stay eager
            compile_blocks(self.policy, self.model_settings.get("block_class"))
        if self.device_mesh is not None:
            mesh, block_class = self.device_mesh["data_parallel"], self.model_settings.get("block_class")
            shard_causal_lm(self.policy, mesh, block_class)
            for reference in (self.reference, self.kl_reference):
                if isinstance(reference, FrozenReference):
                    shard_causal_lm(reference.model, mesh, block_class)

    _prepared = False

    @property
    def needs_reference(self) -> bool:
        """Whether training uses π_ref (the objective's say; a subclass may need it for its own reasons)."""
        return self.objective.needs_reference

    def _holds_reference_model(self) -> bool:
        if self.reference is None:
            return False
        with self.reference.as_model() as model:
            return model is not None

    @contextlib.contextmanager
    def reference_model(self) -> Iterator[torch.nn.Module | None]:
        """The reference as a causal LM, for sampling and for scoring samples (None: no model holds it)."""
        reference = self.kl_reference or self.reference
        if reference is None:
            yield None
            return
        with reference.as_model() as model:
            yield model

    def _step(self, batch: Batch, stage: str) -> torch.Tensor:
        batch = batch_for(self.policy, batch)
        if stage == "train":
            self.trained_batch = batch  # what `Throughput` counts
        token_logps = token_logprobs(self.policy, batch, lean=self.model_settings.get("lean_logprobs", True))  # [N]
        policy_sums = sum_per_sequence(token_logps, batch)  # [S] log-probs, [S] token counts
        reference_sums = self.reference.logprobs(batch) if self.reference is not None else None  # [S], [S]
        policy = pair_logps(*policy_sums, batch, token_logps)
        reference = pair_logps(*reference_sums, batch) if reference_sums is not None else None
        if batch.ranked or self.objective.takes_rankings:
            policy_rankings = ranking_logps(*policy_sums, batch)
            reference_rankings = ranking_logps(*reference_sums, batch) if reference_sums is not None else None
        inputs = (policy_rankings, reference_rankings) if self.objective.takes_rankings else (policy, reference)
        if stage == "train" and not batch.placeholder:  # an objective's running state sees real training data only
            self.objective.observe(*inputs)
        output = self.objective(*inputs)
        metrics = preference_metrics(output, policy)
        if batch.ranked:
            metrics |= ranking_metrics(policy_rankings, reference_rankings)
        if stage == "val":
            self.validation_totals.add(metrics, counted=not batch.placeholder, device=self.device)
        if batch.placeholder:  # a rank out of streaming data: same forward and backward, no effect, no metrics
            return 0.0 * output.losses.sum()
        if stage == "train":
            self.log_dict({f"train/{name}": mean.value for name, mean in metrics.items()}, batch_size=batch.num_pairs)
        return output.losses.mean() * batch.loss_weight  # its rank's share of the step (streaming DDP)

    def on_validation_epoch_start(self) -> None:
        self.validation_totals = MetricTotals()

    def on_validation_epoch_end(self) -> None:
        """Log val/<metric>: its mean over every validation pair (ranking, example: what the metric is a mean over)
        of every rank (`MetricTotals`)."""
        means = self.validation_totals.means(self.trainer.strategy)
        if means:
            self.log_dict({f"val/{name}": value for name, value in means.items()})

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "val")

    def on_train_batch_end(self, outputs: Any, batch: Batch, batch_idx: int) -> None:
        """Let the reference strategy follow the policy (e.g. TR-DPO's periodic mixing)."""
        if self.reference is not None:
            self.reference.after_optimizer_step(self.policy, self.global_step)

    def configure_optimizers(self) -> dict:
        """The configured optimizer over trainable policy parameters only, with linear warm-up
        `lr · min(1, (step + 1) / (warmup_steps + 1))` as in the reference implementation."""
        return optimizer_with_warmup(self.optimizer_config, (p for p in self.policy.parameters() if p.requires_grad))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the frozen reference out of checkpoints: it is rebuilt from its source on load — unless its
        weights change during training (`reference.in_checkpoint`: `reference=sync`), which must be saved."""
        state = checkpoint["state_dict"]
        for prefix in self._rebuilt_prefixes():
            for key in [k for k in state if k.startswith(prefix)]:
                del state[key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Put the rebuilt reference's weights back so that strict loading still checks the policy (a saved
        reference, `in_checkpoint`, loads from the checkpoint instead; a sharded checkpoint, `trainer=fsdp`, is
        already loaded by `parallel.FSDP2Strategy` and has no `state_dict` here)."""
        if "state_dict" not in checkpoint:
            return
        for prefix in self._rebuilt_prefixes():
            reference = self.reference if prefix == REFERENCE_PREFIX else self.kl_reference
            checkpoint["state_dict"].update({prefix + k: v for k, v in reference.state_dict().items()})

    def _rebuilt_prefixes(self) -> list[str]:
        """State-dict prefixes of frozen models that are rebuilt from their source rather than checkpointed."""
        prefixes = [KL_REFERENCE_PREFIX] if self.kl_reference is not None else []
        if self.reference is not None and not self.reference.in_checkpoint:
            prefixes.append(REFERENCE_PREFIX)
        return prefixes
