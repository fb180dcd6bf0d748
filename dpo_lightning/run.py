"""One training run: validate → build data, module, trainer → fit → final validation → export → summary.

conf ──► validate_config ──► source ─► PreferenceDataModule ─► DPOLitModule ─► Trainer.fit
                                                                              └─► policy/, summary.json
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from dpo_lightning.callbacks import Throughput
from dpo_lightning.checkpointing import SafetensorsCheckpointIO
from dpo_lightning.config import TASK_DATA_KEYS, build, check_rankings, validate_config
from dpo_lightning.console import (
    print_config_tree,
    progress_bar,
    redacted_argv,
    redacted_config,
    save_resolved_config,
)
from dpo_lightning.data.datamodule import PreferenceDataModule
from dpo_lightning.data.sources import build_source
from dpo_lightning.data.sources.base import is_ranked
from dpo_lightning.eval.callback import SampleEvaluation
from dpo_lightning.eval.sampling import SamplingSettings
from dpo_lightning.export import RunSummary, export_policy
from dpo_lightning.faults import DivergenceGuard, Preemption
from dpo_lightning.models import load_tokenizer
from dpo_lightning.module import DPOLitModule
from dpo_lightning.parallel import full_state_dict
from dpo_lightning.reference import export_model, precompute_reference
from dpo_lightning.resume import LAST_CHECKPOINT, RandomState, resume_checkpoint

log = logging.getLogger(__name__)


def _plain(node: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(node, resolve=True)


def build_datamodule(cfg: DictConfig, tokenizer) -> PreferenceDataModule:
    """The task's source (its config minus the tokenization keys) wrapped in a PreferenceDataModule."""
    task = _plain(cfg.task)
    return PreferenceDataModule(
        build_source(task),
        tokenizer,
        batch_size=cfg.data.batch_size,
        eval_batch_size=cfg.data.eval_batch_size,
        num_workers=cfg.data.num_workers,
        layout=cfg.data.layout,
        packing_max_tokens=cfg.data.packing_max_tokens,
        group_by_length=cfg.data.group_by_length,
        rankings=cfg.data.rankings,
        ranking_pairs=cfg.data.ranking_pairs,
        seed=cfg.seed,
        **{key: task[key] for key in TASK_DATA_KEYS if key != "name"},
    )


def build_sample_evaluation(cfg: DictConfig, tokenizer, output_dir: Path) -> SampleEvaluation | None:
    """The validation-time sampler (None with `samples.num_prompts=0`), its reward loaded now: a reward model
    that cannot work stops the run before training."""
    samples = cfg.samples
    if samples.num_prompts == 0:
        return None
    settings = SamplingSettings(**{key: samples[key] for key in SamplingSettings.__dataclass_fields__})
    reward = build(cfg.task.reward) if cfg.task.get("reward") else None
    return SampleEvaluation(samples.num_prompts, tokenizer, settings, reward, output_dir / "samples", samples.kl)


def build_trainer(cfg: DictConfig, output_dir: Path, callbacks: list[L.Callback]) -> L.Trainer:
    """The configured Trainer, with checkpoints as safetensors written atomically (`checkpointing`), the run's
    fault handling (`faults`: divergence, SIGTERM) and RNG states kept in checkpoints (`resume.RandomState`).

    Clipping by norm (`trainer.gradient_clip_val`) is done by `faults.DivergenceGuard` with the gradient norm it
    computes anyway; clipping by value (`+trainer.gradient_clip_algorithm=value`) is left to Lightning."""
    checkpoint = ModelCheckpoint(dirpath=output_dir / "checkpoints", **_plain(cfg.checkpoint))
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


def _report(metrics: dict[str, Any], global_step: int, output_dir: Path) -> None:
    """Log the final validation metrics, with what they were before training, and where the outputs are."""
    if "val/rewards/accuracies" in metrics:
        log.info(
            "val/rewards/accuracies %.3f (chance 0.5) · val/loss %.4f (pairwise DPO: log 2 = 0.6931 before training) · "
            "val/rewards/margins %.3f",
            metrics["val/rewards/accuracies"],
            metrics["val/loss"],
            metrics["val/rewards/margins"],
        )
    if "val/ranking/kendall_tau" in metrics:
        log.info(
            "val/ranking/kendall_tau %.3f (chance 0) · val/ranking/top1 %.3f",
            metrics["val/ranking/kendall_tau"],
            metrics["val/ranking/top1"],
        )
    if "val/reward" in metrics:
        log.info(
            "val/reward %.3f (the reference's samples: %.3f) · val/kl %.2f nats",
            metrics["val/reward"],
            metrics.get("val/reference_reward", float("nan")),
            metrics.get("val/kl", float("nan")),
        )
    log.info(
        "train/pairs_per_s %.1f · %s steps · run folder %s",
        metrics.get("train/pairs_per_s", 0.0),
        global_step,
        output_dir,
    )


def run(cfg: DictConfig, output_dir: Path, choices: dict[str, str] | None = None) -> dict[str, Any]:
    """Train as configured; write `summary.json` (always) and `policy/` (on success) into `output_dir`.

    `choices`: the option chosen in each config group (`loss: dpo`, …), recorded in the summary.
    """
    started = time.perf_counter()
    summary = RunSummary(output_dir, redacted_config(cfg))
    summary.update(choices=choices or {})
    trainer: L.Trainer | None = None
    try:
        print_config_tree(cfg)
        save_resolved_config(cfg, output_dir)
        validate_config(cfg)
        bar = progress_bar(cfg)  # checks the progress_bar key before any model loads
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        tokenizer = load_tokenizer(cfg.model)
        datamodule = build_datamodule(cfg, tokenizer)
        check_rankings(cfg, is_ranked(datamodule.source))
        sample_evaluation = build_sample_evaluation(cfg, tokenizer, output_dir)
        module = DPOLitModule(
            model=_plain(cfg.model),
            loss=_plain(cfg.loss),
            optimizer=_plain(cfg.optimizer),
            reference=_plain(cfg.reference),
            kl_reference=sample_evaluation is not None and cfg.samples.kl,
        )
        throughput = Throughput()
        trainer = build_trainer(cfg, output_dir, [throughput, *filter(None, [sample_evaluation, bar])])
        with redacted_argv():  # W&B starts its run here and records the command line
            for logger in trainer.loggers:
                logger.log_hyperparams(redacted_config(cfg))
        if cfg.reference.name == "precomputed" and module.objective.needs_reference:  # before fit: see reference.py
            module.reference_config["cache_file"] = str(precompute_reference(cfg, datamodule, trainer))
        start = cfg.ckpt_path or resume_checkpoint(cfg.resume, output_dir)  # None: a fresh start
        if start is not None:
            log.info("continuing from %s", start)
        trainer.fit(module, datamodule=datamodule, ckpt_path=start)
        train_metrics = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
        trainer.validate(module, datamodule=datamodule, verbose=False)
        summary.add_metrics(train_metrics | dict(trainer.callback_metrics) | throughput.totals(trainer.world_size))
        summary.update(status="interrupted" if trainer.interrupted else "completed", data=datamodule.report())
        policy_state = full_state_dict(module.policy)  # trainer=fsdp: gathered from the shards (every rank)
        if trainer.is_global_zero:
            exported = export_model(module.policy, cfg.reference)  # reference=lora: merged, or the adapters only
            folder = export_policy(exported, tokenizer, output_dir / "policy", policy_state)
            summary.update(policy=str(folder))
            _report(summary.content["metrics"], trainer.global_step, output_dir)
    except BaseException as error:
        summary.fail(error)
        raise
    finally:
        summary.update(
            wall_time_s=round(time.perf_counter() - started, 3),
            global_step=trainer.global_step if trainer is not None else 0,
        )
        if rank_zero_only.rank == 0:
            summary.write()
    return summary.content
