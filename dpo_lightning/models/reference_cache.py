"""`reference=precomputed`: the one no-grad pass before training that caches every reference log-prob.

A response's key is a hash of its own and its prompt's token ids (`data.collate.sequence_key`), so a cached value
belongs to exactly those tokens, in a pair or a ranking alike (a response shared by several pairs is computed and
stored once); the cache file's name is a hash of everything its values depend on (the reference weights and
config, precision, tokenizer and tokenization settings, the data) and the same parts are stored in the file and
compared on reuse, so a change recomputes and a stale file is never read. A response missing from the cache at
training time is an error, never a silent fallback (`reference.PrecomputedReference`).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from transformers import PreTrainedTokenizerBase

from dpo_lightning.data.collate import Batch, sequence_keys
from dpo_lightning.data.sources.base import SPLITS
from dpo_lightning.models.layouts import batch_for
from dpo_lightning.models.loading import DTYPES, build_model
from dpo_lightning.models.logprobs import check_supported, sequence_logprobs

if TYPE_CHECKING:
    import lightning as L

    from dpo_lightning.data.datamodule import PreferenceDataModule

log = logging.getLogger(__name__)

CACHE_FORMAT = 2  # bump when the cache layout or the log-prob computation changes: every old cache is stale
CACHE_SUBDIR = "reference_cache"  # default cache folder inside the run folder


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
    dtype = None if reference.get("dtype") is None else DTYPES[reference["dtype"]]
    model_config = {k: v for k, v in model.config.to_dict().items() if k != "_name_or_path"}
    fingerprint = json.dumps(
        {
            "format": CACHE_FORMAT,
            "model": {"config": model_config, "weights": weights_fingerprint(model)},
            "precision": {"dtype": str(dtype or model.dtype), "trainer": str(trainer.precision)},
            "tokenization": {**asdict(datamodule.tokenize), "tokenizer": tokenizer_fingerprint(datamodule.tokenizer)},
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
