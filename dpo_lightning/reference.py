"""The reference model π_ref of the DPO objective, and the strategies for holding it (`reference/` group).

    model        FrozenReference: a frozen copy of the initial policy, optionally in a lower precision
                 (`reference.dtype`) — eval mode always (dropout off, even after `LightningModule.train()`),
                 no parameter requires grad, forward only under `no_grad`.
    precomputed  PrecomputedReference: one no-grad pass before training (`precompute_reference`, called by
                 `run.py` before `trainer.fit`) writes every training and validation pair's reference
                 log-probs to a cache file; training looks them up by `Batch.sequence_keys`, holds no model.
    lora         AdapterDisabledReference: the policy becomes a PEFT LoRA model (only the adapters train) and
                 the reference is the same network with its adapters disabled — no second copy.
    none         NoReference: π_ref ≡ 1, every reference log-prob 0; nothing is built.
    sync         SyncReference: TR-DPO (Gorbatovski et al. 2024): a frozen copy that every
                 `reference.every_n_steps` optimizer steps becomes α·policy + (1 − α)·reference.

Every strategy answers `logprobs(batch)` with [S] summed response log-probs and [S] token counts, like
`sequence_logprobs`, never with gradients. Reference weights are not written into checkpoints — the module
rebuilds the reference from the same source on resume — except where they change during training
(`in_checkpoint`: `sync`).

The precomputed cache. A response's key is a hash of its own and its prompt's token ids
(`data.collate.sequence_key`), so a cached value belongs to exactly those tokens, in a pair or a ranking alike (a
response shared by several pairs is computed and stored once); the cache file's name is a hash of everything its
values depend on (the reference weights and config, precision, tokenizer and tokenization settings, the data) and
the same parts are stored in the file and compared on reuse, so a change recomputes and a stale file is never
read. A response missing from the cache at training time is an error, never a silent fallback.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from dpo_lightning.config import REFERENCE_STRATEGIES
from dpo_lightning.data.collate import Batch, sequence_keys
from dpo_lightning.data.sources.base import SPLITS
from dpo_lightning.errors import DataError
from dpo_lightning.layout_support import batch_for
from dpo_lightning.logprobs import check_supported, sequence_logprobs
from dpo_lightning.models import DTYPES, build_model

if TYPE_CHECKING:
    import lightning as L

    from dpo_lightning.data.datamodule import PreferenceDataModule

log = logging.getLogger(__name__)

STRATEGIES: tuple[str, ...] = REFERENCE_STRATEGIES
CACHE_FORMAT = 2  # bump when the cache layout or the log-prob computation changes: every old cache is stale
CACHE_SUBDIR = "reference_cache"  # default cache folder inside the run folder


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
    """`reference=precomputed`: log-probs looked up in a cache file written by `precompute_reference`.

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
                "reference=precomputed has no cache file: run through dpo_lightning.run (which calls "
                "precompute_reference before fit), or give DPOLitModule's reference config a cache_file"
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


def _dtype(config: Mapping[str, Any]) -> torch.dtype | None:
    name = config.get("dtype")
    return None if name is None else DTYPES[name]


def _wrap_lora(policy: PreTrainedModel, config: Mapping[str, Any]) -> nn.Module:
    from peft import LoraConfig, get_peft_model  # optional dependency: checked by validate_config

    lora = config["lora"]
    target_modules = lora["target_modules"]
    lora_config = LoraConfig(
        r=lora["r"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"],
        target_modules=list(target_modules) if target_modules is not None else None,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(policy, lora_config)


def build_reference(
    config: Mapping[str, Any], policy: PreTrainedModel, needed: bool
) -> tuple[PreTrainedModel, Reference | None]:
    """(the policy to train, the reference) for strategy `config["name"]`, called once the policy exists.

    `lora` wraps the policy in LoRA adapters (even when the objective needs no reference: it decides what
    trains); the others return it unchanged. The reference is None when the objective needs none (`needed`
    false).
    """
    name = config["name"]
    if name not in STRATEGIES:
        raise ValueError(f"unknown reference strategy {name!r}; expected one of {STRATEGIES}")
    if name == "lora":
        policy = _wrap_lora(policy, config)
        return policy, AdapterDisabledReference(policy) if needed else None
    if not needed:
        return policy, None
    if name == "model":
        return policy, FrozenReference(_cast_copy(policy, _dtype(config)))
    if name == "sync":
        return policy, SyncReference(copy.deepcopy(policy), config["alpha"], config["every_n_steps"])
    if name == "precomputed":
        return policy, PrecomputedReference(config.get("cache_file"))
    return policy, NoReference()


def evaluation_reference(config: Mapping[str, Any], policy: nn.Module, reference: Reference | None) -> Reference | None:
    """A reference model for evaluation only (sampling π_ref, KL of policy samples), where `reference` is not
    one: None when `reference` holds a model (it serves); the adapter-disabled policy under `lora` (no copy);
    otherwise a frozen copy of `policy`, which must still be the initial policy (`precomputed` and `none` hold no
    model, and an objective without a reference builds none)."""
    if reference is not None:
        with reference.as_model() as model:
            if model is not None:
                return None
    if config["name"] == "lora":
        return AdapterDisabledReference(policy)
    return FrozenReference(_cast_copy(policy, _dtype(config)))


def export_model(policy: nn.Module, config: Mapping[str, Any]) -> nn.Module:
    """What to save as the run's `policy/`: the policy itself, except for `reference=lora`, where it is a PEFT
    model: a merged full model (`reference.lora.merge_on_export`, loadable with the Auto classes; a merged
    copy — the policy keeps its adapters) or the PEFT model, whose `save_pretrained` writes only the adapters
    (`adapter_config.json`, `adapter_model.safetensors`; load them onto the base model with peft)."""
    if config.get("name") != "lora":
        return policy
    if config["lora"]["merge_on_export"]:
        return copy.deepcopy(policy).merge_and_unload()
    return policy


# --- reference=precomputed: the one pass before training ------------------------------------------------


def _digest(*parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def weights_fingerprint(model: nn.Module) -> str:
    """A hash of every tensor of the state dict: names, dtypes, shapes and bytes."""
    hasher = hashlib.blake2b(digest_size=16)
    for name, tensor in model.state_dict().items():
        hasher.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        hasher.update(tensor.detach().reshape(-1).cpu().contiguous().view(torch.uint8).numpy())
    return hasher.hexdigest()


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A hash of what turns text into ids: the tokenizer's class, model (vocabulary, merges, normalizer,
    added tokens; minus runtime padding/truncation state), chat template and EOS."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        model = json.loads(backend.to_str())
        model.pop("padding", None)
        model.pop("truncation", None)
    else:
        model = sorted(tokenizer.get_vocab().items())
    return _digest(type(tokenizer).__name__, model, tokenizer.chat_template, tokenizer.eos_token_id)


def _data_fingerprint(cfg: DictConfig, datamodule: PreferenceDataModule) -> dict[str, Any]:
    """Map-style: a hash of every response's key, per split (the data itself). Streaming data cannot be read
    before training just to name the cache: its task config and seed stand for it (the sequence keys still make
    a changed stream fail loudly, never use stale values)."""
    if not datamodule.streaming:
        hashes = {}
        for split in SPLITS:
            keys = sorted(
                key
                for row in datamodule.pairs[split].with_format(None)
                for key in sequence_keys(datamodule.preparer.example(row))
            )
            hashes[split] = hashlib.blake2b(torch.tensor(keys).numpy().tobytes(), digest_size=16).hexdigest()
        return {"pairs": hashes}
    task = {k: v for k, v in _plain(cfg.task).items() if k not in ("streaming", "shuffle_buffer", "reward")}
    return {"stream": task, "seed": cfg.seed}


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def _stored_fingerprint(path: Path) -> str | None:
    try:
        with safe_open(path, framework="pt") as cache:
            return (cache.metadata() or {}).get("fingerprint")
    except (OSError, ValueError, RuntimeError):
        return None  # absent, partial or not a safetensors file: never used


@torch.no_grad()
def compute_table(
    model: nn.Module,
    batches: Iterable[Batch],
    device: torch.device,
    forward_context: contextlib.AbstractContextManager | None = None,
) -> dict[str, torch.Tensor]:
    """Reference log-probs of every response of `batches` (placeholders skipped), the forward passes inside
    `forward_context` (e.g. the trainer's autocast): {"keys": [U] sorted unique sequence keys, "logps": [U] fp32,
    "counts": [U] int32}."""
    keys, logps, counts = [], [], []
    with forward_context or contextlib.nullcontext():
        for batch in batches:
            if batch.placeholder:
                continue
            batch = batch_for(model, move_data_to_device(batch, device))
            sums, tokens = sequence_logprobs(model, batch)  # [S], [S]
            keys.append(batch.sequence_keys.cpu())
            logps.append(sums.float().cpu())
            counts.append(tokens.int().cpu())
    all_keys = torch.cat(keys) if keys else torch.zeros(0, dtype=torch.long)
    unique, inverse = torch.unique(all_keys, sorted=True, return_inverse=True)
    first = torch.full_like(unique, len(all_keys)).scatter_reduce(
        0, inverse, torch.arange(len(all_keys)), reduce="amin"
    )  # one row per key (a response met twice has equal values)
    return {
        "keys": unique.contiguous(),
        "logps": (torch.cat(logps) if logps else torch.zeros(0))[first].contiguous(),
        "counts": (torch.cat(counts) if counts else torch.zeros(0, dtype=torch.int32))[first].contiguous(),
    }


def precompute_reference(
    cfg: DictConfig, datamodule: PreferenceDataModule, trainer: L.Trainer, wait_s: float = 5.0
) -> Path:
    """`reference=precomputed`: the cache file of this run's reference log-probs, computed if needed.

    Called before `trainer.fit`. Builds the initial policy from `cfg.model` (the reference), names the cache
    by the hash of its fingerprint (reference weights and config, `reference.dtype`, trainer precision,
    tokenizer and tokenization settings, data, batch layout) in `reference.cache_dir` (null:
    `<run folder>/reference_cache`), and reuses a file only if the fingerprint stored in it is equal. Otherwise
    one no-grad pass over every training and validation pair (map-style: all pairs; streaming: one unsharded,
    unshuffled pass over the stream) on the trainer's device and precision writes it (safetensors,
    atomically). The model is freed before returning.

    DDP: before `fit` only rank 0 exists (Lightning starts the other ranks inside `fit`; they rerun the
    script and find the cache). Under a launcher that starts every rank at once (torchrun, SLURM), rank 0
    computes and the others wait for the file (polling, no collective, so no timeout).
    """
    reference = _plain(cfg.reference)
    datamodule.setup("fit")
    model = build_model(_plain(cfg.model))
    check_supported(model)
    dtype = _dtype(reference)
    model_config = {k: v for k, v in model.config.to_dict().items() if k != "_name_or_path"}
    fingerprint = json.dumps(
        {
            "format": CACHE_FORMAT,
            "model": {"config": model_config, "weights": weights_fingerprint(model)},
            "precision": {"dtype": str(dtype or model.dtype), "trainer": str(trainer.precision)},
            "tokenization": {**datamodule.tokenize_options, "tokenizer": tokenizer_fingerprint(datamodule.tokenizer)},
            "data": _data_fingerprint(cfg, datamodule),
            # the batching changes the values by rounding only (which tokens share a row, how much padding)
            "batching": {key: cfg.data.get(key) for key in ("layout", "packing_max_tokens", "eval_batch_size")},
        },
        sort_keys=True,
        default=str,
    )
    cache_dir = Path(reference.get("cache_dir") or Path(trainer.default_root_dir) / CACHE_SUBDIR)
    path = cache_dir / f"reference-logps-{hashlib.blake2b(fingerprint.encode(), digest_size=8).hexdigest()}.safetensors"

    if _stored_fingerprint(path) == fingerprint:
        log.info("reference=precomputed: reusing %s", path)
        return path
    if rank_zero_only.rank != 0:
        del model
        log.info("reference=precomputed: waiting for rank 0 to write %s", path)
        while _stored_fingerprint(path) != fingerprint:
            time.sleep(wait_s)
        return path

    started = time.perf_counter()
    device = trainer.strategy.root_device
    if dtype is not None:
        model = model.to(dtype)
    model = trainer.precision_plugin.convert_module(model).requires_grad_(False).eval().to(device)
    batches = (
        batch for split in SPLITS for batch in datamodule._loader(split, datamodule.eval_batch_size, shuffle=False)
    )
    table = compute_table(model, batches, device, trainer.precision_plugin.forward_context())
    del model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(table, temporary, metadata={"fingerprint": fingerprint})
    temporary.replace(path)
    log.info(
        "reference=precomputed: %d responses in %.1f s → %s (no reference model during training)",
        len(table["keys"]),
        time.perf_counter() - started,
        path,
    )
    return path
