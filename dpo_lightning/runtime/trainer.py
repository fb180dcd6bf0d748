"""The Lightning Trainer of a run (`trainer/` group) and the checks of its settings that need no model."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from dpo_lightning.data.datamodule import micro_batch_size
from dpo_lightning.errors import ConfigError
from dpo_lightning.models.reference import LoraAdapters
from dpo_lightning.models.sharding import is_fsdp
from dpo_lightning.runtime.checkpoints import SafetensorsCheckpointIO
from dpo_lightning.runtime.faults import DivergenceGuard, Preemption
from dpo_lightning.runtime.resume import LAST_CHECKPOINT, RandomState

# `trainer.precision` values (Lightning's names; its short aliases are accepted too) and those
# ModelParallelStrategy supports (trainer=fsdp).
PRECISIONS: tuple[str, ...] = ("32-true", "bf16-mixed", "bf16-true", "16-mixed", "16-true", "64-true")
PRECISION_ALIASES = {"32": "32-true", "16": "16-mixed", "bf16": "bf16-mixed", "64": "64-true"}
FSDP_PRECISIONS: tuple[str, ...] = ("32-true", "bf16-mixed", "bf16-true", "16-true")


def trains_on_cpu(trainer: DictConfig) -> bool:
    """Whether the Trainer config puts training on the CPU (`auto` does where there is no GPU)."""
    accelerator = trainer.get("accelerator", "auto")
    return accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())


def check_trainer_config(cfg: DictConfig) -> None:
    """Checks of the scale settings that need no model (precision, the global batch over devices, `trainer=fsdp`,
    flex attention's device); each failure is one ConfigError naming the key."""
    trainer, model = cfg.trainer, cfg.model
    precision = str(trainer.get("precision", "32-true"))
    precision = PRECISION_ALIASES.get(precision, precision)
    if precision not in PRECISIONS:
        raise ConfigError("trainer.precision", f"must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    devices, num_nodes = trainer.get("devices", 1), trainer.get("num_nodes", 1)
    accumulate = trainer.get("accumulate_grad_batches", 1)
    if isinstance(devices, int) and isinstance(num_nodes, int) and isinstance(accumulate, int):
        micro_batch_size(cfg.data.batch_size, num_nodes, devices, accumulate)
    if model.get("attn_implementation") == "flex_attention" and trains_on_cpu(trainer):
        raise ConfigError(
            "model.attn_implementation",
            "flex_attention has no backward pass on the CPU in torch; use sdpa there (flex_attention is for GPUs)",
        )
    if not is_fsdp(trainer):
        return
    if cfg.reference.get("_target_") == f"{LoraAdapters.__module__}.{LoraAdapters.__name__}":
        raise ConfigError(
            "reference",
            "reference=lora is not supported with trainer=fsdp (sharding a PEFT model is untested here); "
            "use trainer=ddp, whose per-device memory LoRA already cuts to one copy of the frozen base",
        )
    if precision not in FSDP_PRECISIONS:
        raise ConfigError("trainer.precision", f"trainer=fsdp supports {', '.join(FSDP_PRECISIONS)}, got {precision!r}")
    if model.get("block_class") is None and model.get("name_or_path") is None and model.get("init_from") is None:
        raise ConfigError(
            "model.block_class",
            f"trainer=fsdp shards per transformer block: name the block class of the random-init "
            f"{model.get('architecture')!r} model (e.g. LlamaDecoderLayer)",
        )


def build_trainer(cfg: DictConfig, output_dir: Path, callbacks: list[L.Callback]) -> L.Trainer:
    """The configured Trainer, with checkpoints as safetensors written atomically (`checkpoints`), the run's
    fault handling (`faults`: divergence, SIGTERM) and RNG states kept in checkpoints (`resume.RandomState`).

    Clipping by norm (`trainer.gradient_clip_val`) is done by `faults.DivergenceGuard` with the gradient norm it
    computes anyway; clipping by value (`+trainer.gradient_clip_algorithm=value`) is left to Lightning."""
    checkpoint = instantiate(cfg.checkpoint, dirpath=output_dir / "checkpoints")
    loggers = [instantiate(cfg.logger)] if cfg.get("logger") else []
    by_norm = cfg.trainer.get("gradient_clip_algorithm") in (None, "norm")
    guard = DivergenceGuard(max_norm=cfg.trainer.get("gradient_clip_val") if by_norm else None)
    run_callbacks = [checkpoint, guard, Preemption(output_dir / LAST_CHECKPOINT), RandomState()]
    return instantiate(
        cfg.trainer,
        default_root_dir=str(output_dir),
        logger=loggers,
        callbacks=[*run_callbacks, *callbacks],
        plugins=[SafetensorsCheckpointIO()],
        **({"gradient_clip_val": None} if by_norm else {}),
    )
