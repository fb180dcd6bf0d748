"""The reference model π_ref of the DPO objective, and the strategies for holding it (`reference/` group).

Each option of the group names its strategy class by `_target_`; the class's fields are the option's keys
(checked as a structured config: `dpo_lightning.instantiate.build`). A strategy builds, once the policy
exists, the `Reference` module that answers for π_ref:

    model        FrozenCopy → FrozenReference: a frozen copy of the initial policy, optionally in a lower
                 precision (`reference.dtype`) — eval mode always (dropout off, even after
                 `LightningModule.train()`), no parameter requires grad, forward only under `no_grad`.
    precomputed  Precomputed → PrecomputedReference: one no-grad pass before training
                 (`reference_cache.precompute_reference`, called by the run before `trainer.fit`) writes every
                 training and validation pair's reference log-probs to a cache file; training looks them up by
                 `Batch.sequence_keys`, holds no model.
    lora         LoraAdapters → AdapterDisabledReference: the policy becomes a PEFT LoRA model (only the
                 adapters train) and the reference is the same network with its adapters disabled — no copy.
    none         Reference-free → NoReference: π_ref ≡ 1, every reference log-prob 0; nothing is built.
    sync         PeriodicSync → SyncReference: TR-DPO (Gorbatovski et al. 2024): a frozen copy that every
                 `reference.every_n_steps` optimizer steps becomes α·policy + (1 − α)·reference.

Every `Reference` answers `logprobs(batch)` with [S] summed response log-probs and [S] token counts, like
`sequence_logprobs`, never with gradients. Reference weights are not written into checkpoints — the module
rebuilds the reference from the same source on resume — except where they change during training
(`in_checkpoint`: `sync`).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import PreTrainedModel

from dpo_lightning.data.collate import Batch
from dpo_lightning.errors import ConfigError, DataError
from dpo_lightning.models.loading import DTYPE_NAMES, DTYPES
from dpo_lightning.models.logprobs import sequence_logprobs


class Reference(nn.Module):
    """A reference strategy: log-probs without gradients, and a hook after each optimizer step."""

    in_checkpoint: bool = False  # whether checkpoints keep this reference's weights (they change in training)

    def logprobs(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """[S] summed response log-probs and [S] token counts of the batch's S sequences (2P for pairs)."""
        raise NotImplementedError

    def after_optimizer_step(self, policy: nn.Module, step: int) -> None:
        """Called after every optimizer step with the updated policy (most strategies ignore it)."""

    @contextlib.contextmanager
    def as_model(self) -> Iterator[nn.Module | None]:
        """The reference as a causal LM in eval mode, to sample from (None: this strategy holds no model)."""
        yield None

    def train(self, mode: bool = True) -> Reference:
        """Stay in eval mode whatever the caller asks."""
        return super().train(False)


class FrozenReference(Reference):
    """`reference=model`: a frozen copy of a causal LM that only ever computes log-probs."""

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__()
        self.model = model.requires_grad_(False).eval()

    @torch.no_grad()
    def logprobs(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        return sequence_logprobs(self.model, batch)

    @contextlib.contextmanager
    def as_model(self) -> Iterator[nn.Module | None]:
        yield self.model


class NoReference(Reference):
    """`reference=none`: π_ref ≡ 1, as the reference implementation's `reference_free` option."""

    def logprobs(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        num_sequences = batch.num_sequences
        num_tokens = torch.bincount(batch.target_seqs, minlength=num_sequences)  # [S]
        return torch.zeros(num_sequences, device=batch.target_seqs.device), num_tokens


class SyncReference(FrozenReference):
    """`reference=sync` (TR-DPO): every `every_n_steps` optimizer steps, ref ← α·policy + (1 − α)·ref.

    α = 1 is TR-DPO's hard update (the reference becomes the policy). `syncs` counts the updates made (it is
    saved with the weights), so a step seen twice (gradient accumulation calls the hook once per micro-batch)
    mixes once, and a resumed run catches up on an update its checkpoint was written just before.
    """

    in_checkpoint = True

    def __init__(self, model: PreTrainedModel, alpha: float, every_n_steps: int) -> None:
        super().__init__(model)
        self.alpha, self.every_n_steps = float(alpha), int(every_n_steps)
        self.register_buffer("syncs", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def after_optimizer_step(self, policy: nn.Module, step: int) -> None:
        due = step // self.every_n_steps
        if due <= int(self.syncs):
            return
        current = dict(policy.named_parameters())
        for name, parameter in self.model.named_parameters():
            parameter.lerp_(current[name].detach().to(parameter.dtype), self.alpha)  # ref + α·(policy − ref)
        self.syncs.fill_(due)


class AdapterDisabledReference(Reference):
    """`reference=lora`: the policy (a PEFT model) with its adapters disabled, in eval mode, without grad.

    It borrows the policy rather than holding it as a submodule: it owns no parameters, and the policy's
    parameters stay listed once, under the policy.
    """

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        self._policy = (policy,)  # a tuple: not registered as a submodule

    @torch.no_grad()
    def logprobs(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        with self.as_model() as base:
            return sequence_logprobs(base, batch)

    @contextlib.contextmanager
    def as_model(self) -> Iterator[nn.Module | None]:
        (policy,) = self._policy
        training = policy.training
        policy.train(False)
        try:
            with policy.disable_adapter():
                yield policy
        finally:
            policy.train(training)


class PrecomputedReference(Reference):
    """`reference=precomputed`: log-probs looked up in a cache file written by `reference_cache.precompute_reference`.

    Holds no model: only a sorted [U] int64 key table, [U] fp32 log-probs and [U] int32 token counts — 16 bytes
    a distinct response — as plain tensors (not buffers: DDP would broadcast them every
    step), copied to the batch's device on first use.
    """

    def __init__(self, cache_file: str | os.PathLike | None) -> None:
        super().__init__()
        self.cache_file = None if cache_file is None else Path(cache_file)
        self._tables: dict[torch.device, dict[str, torch.Tensor]] = {}
        if self.cache_file is not None:
            self._tables[torch.device("cpu")] = load_file(self.cache_file)

    def _table(self, device: torch.device) -> dict[str, torch.Tensor]:
        if self.cache_file is None:
            raise RuntimeError(
                "reference=precomputed has no cache file: run through dpo_lightning.runtime.run (which calls "
                "reference_cache.precompute_reference before fit), or give the Precomputed strategy a cache_file"
            )
        if device not in self._tables:
            self._tables[device] = {k: v.to(device) for k, v in self._tables[torch.device("cpu")].items()}
        return self._tables[device]

    @torch.no_grad()
    def logprobs(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        device = batch.target_seqs.device
        num_tokens = torch.bincount(batch.target_seqs, minlength=batch.num_sequences)  # [S]
        if batch.placeholder:  # a rank out of streaming data: its loss is multiplied by zero anyway
            return torch.zeros(batch.num_sequences, device=device), num_tokens
        table = self._table(device)
        keys, wanted = table["keys"], batch.sequence_keys
        index = torch.searchsorted(keys, wanted).clamp(max=max(len(keys) - 1, 0))  # [S]
        found = keys[index] == wanted if len(keys) else torch.zeros_like(wanted, dtype=torch.bool)
        if not bool(found.all()):
            missing = wanted[~found]
            raise DataError(
                f"reference=precomputed: {len(missing)} of {batch.num_sequences} responses of this batch are not in "
                f"the reference cache {self.cache_file} (sequence key {int(missing[0])}): it was computed for other "
                "data (a stream that changed under the same task config?); delete it and rerun to recompute it"
            )
        logps = table["logps"][index]  # [S]
        cached_tokens = table["counts"][index].to(num_tokens.dtype)
        if not torch.equal(cached_tokens, num_tokens):
            raise DataError(
                f"reference=precomputed: cached token counts in {self.cache_file} differ from this batch's; "
                "the cache does not belong to these pairs"
            )
        return logps, num_tokens


# --- the strategies: one per option of the `reference/` group ----------------------------------------------


def _cast_copy(policy: PreTrainedModel, dtype: torch.dtype | None) -> PreTrainedModel:
    """A deep copy of `policy`, its floating-point weights in `dtype` (None: as they are) — copied straight
    into `dtype`, never through a full-precision second copy."""
    if dtype is None:
        return copy.deepcopy(policy)
    memo = {
        id(p): nn.Parameter(p.detach().to(dtype=dtype, copy=True), requires_grad=False)  # never shared
        for p in policy.parameters()
        if p.is_floating_point()
    }
    return copy.deepcopy(policy, memo).to(dtype)  # `.to` casts the remaining floating-point buffers


def _check_dtype(dtype: str | None) -> None:
    if dtype is not None and dtype not in DTYPE_NAMES:
        raise ConfigError(
            "reference.dtype", f"must be null (the policy's) or one of {', '.join(DTYPE_NAMES)}, got {dtype!r}"
        )


@dataclass
class ReferenceStrategy:
    """How π_ref is held: called once the policy exists (`DPOLitModule.configure_model`)."""

    name: ClassVar[str]  # the option of the `reference/` group

    def prepare_policy(self, policy: PreTrainedModel) -> nn.Module:
        """The policy to train (`lora` wraps it in adapters; the others return it as it is)."""
        return policy

    def reference(self, policy: nn.Module) -> Reference:
        """The reference for training, built from the (prepared) initial policy."""
        raise NotImplementedError

    def evaluation_reference(self, policy: nn.Module) -> Reference:
        """A reference model for evaluation only (sampling π_ref, KL of samples) where training holds none: a
        frozen copy of the policy, which must still be the initial one."""
        return FrozenReference(_cast_copy(policy, None))

    def exported(self, policy: nn.Module) -> nn.Module:
        """What to save as the run's `policy/` (the policy itself, except under `lora`)."""
        return policy


@dataclass
class FrozenCopy(ReferenceStrategy):
    """`reference=model`: a frozen copy of the initial policy in `dtype` (None: the policy's)."""

    name: ClassVar[str] = "model"
    dtype: str | None = None

    def __post_init__(self) -> None:
        _check_dtype(self.dtype)

    def reference(self, policy: nn.Module) -> Reference:
        return FrozenReference(_cast_copy(policy, None if self.dtype is None else DTYPES[self.dtype]))

    def evaluation_reference(self, policy: nn.Module) -> Reference:
        return self.reference(policy)


@dataclass
class Precomputed(ReferenceStrategy):
    """`reference=precomputed`: log-probs cached before training (`reference_cache.precompute_reference` sets
    `cache_file`); `dtype`: of that one pass; `cache_dir`: where caches live (None: `<run folder>/reference_cache`)."""

    name: ClassVar[str] = "precomputed"
    dtype: str | None = None
    cache_dir: str | None = None
    cache_file: str | None = None

    def __post_init__(self) -> None:
        _check_dtype(self.dtype)

    def reference(self, policy: nn.Module) -> Reference:
        return PrecomputedReference(self.cache_file)

    def evaluation_reference(self, policy: nn.Module) -> Reference:
        return FrozenReference(_cast_copy(policy, None if self.dtype is None else DTYPES[self.dtype]))


@dataclass
class LoraSettings:
    """peft `LoraConfig` arguments of `reference=lora` (`reference.lora.*`)."""

    r: int = 8  # adapter rank
    alpha: float = 16.0  # scaling numerator (the update is scaled by alpha / r)
    dropout: float = 0.0  # dropout on the adapter input (the reference never sees it)
    target_modules: list[str] | None = None  # module names to adapt; None: peft's defaults for the architecture
    merge_on_export: bool = True  # policy/ as a full model with the adapters merged in (False: the adapters only)

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ConfigError("reference.lora.r", f"must be an integer ≥ 1, got {self.r!r}")
        if self.alpha <= 0:
            raise ConfigError("reference.lora.alpha", f"must be > 0, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ConfigError("reference.lora.dropout", f"must be in [0, 1), got {self.dropout}")


@dataclass
class LoraAdapters(ReferenceStrategy):
    """`reference=lora`: the policy becomes a PEFT LoRA model; the reference is it with adapters disabled."""

    name: ClassVar[str] = "lora"
    lora: LoraSettings | None = None

    def __post_init__(self) -> None:
        if importlib.util.find_spec("peft") is None:
            raise ConfigError("reference", "reference=lora needs the peft package: pip install peft")
        if self.lora is None:
            self.lora = LoraSettings()
        elif not isinstance(self.lora, LoraSettings):  # a mapping, as instantiate passes it
            self.lora = LoraSettings(**self.lora)

    def prepare_policy(self, policy: PreTrainedModel) -> nn.Module:
        from peft import LoraConfig, get_peft_model  # optional dependency: checked in __post_init__

        lora = self.lora
        config = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=list(lora.target_modules) if lora.target_modules is not None else None,
            task_type="CAUSAL_LM",
        )
        return get_peft_model(policy, config)

    def reference(self, policy: nn.Module) -> Reference:
        return AdapterDisabledReference(policy)

    def evaluation_reference(self, policy: nn.Module) -> Reference:
        return AdapterDisabledReference(policy)

    def exported(self, policy: nn.Module) -> nn.Module:
        """A merged full model (`reference.lora.merge_on_export`, loadable with the Auto classes; a merged
        copy — the policy keeps its adapters) or the PEFT model, whose `save_pretrained` writes only the adapters
        (`adapter_config.json`, `adapter_model.safetensors`; load them onto the base model with peft)."""
        return copy.deepcopy(policy).merge_and_unload() if self.lora.merge_on_export else policy


@dataclass
class ReferenceFree(ReferenceStrategy):
    """`reference=none`: π_ref ≡ 1 (the reference implementation's `reference_free` option)."""

    name: ClassVar[str] = "none"

    def reference(self, policy: nn.Module) -> Reference:
        return NoReference()


@dataclass
class PeriodicSync(ReferenceStrategy):
    """`reference=sync` (TR-DPO): a frozen copy pulled towards the policy, ref ← α·policy + (1 − α)·ref every
    `every_n_steps` optimizer steps."""

    name: ClassVar[str] = "sync"
    alpha: float = 0.6
    every_n_steps: int = 512

    def __post_init__(self) -> None:
        if not 0 <= self.alpha <= 1:
            raise ConfigError("reference.alpha", f"must be in [0, 1], got {self.alpha}")
        if self.every_n_steps < 1:
            raise ConfigError("reference.every_n_steps", f"must be an integer ≥ 1, got {self.every_n_steps!r}")

    def reference(self, policy: nn.Module) -> Reference:
        return SyncReference(copy.deepcopy(policy), self.alpha, self.every_n_steps)
