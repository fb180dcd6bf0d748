"""One training run: validate → build data, module, trainer → fit → final validation → export → summary.

conf ──► validate_config ──► source ─► PreferenceDataModule ─► DPOLitModule ─► Trainer.fit
                                                                              └─► policy/, summary.json
           algorithm=online:            PromptDataModule    ─► OnlineDPOModule (rollouts + labeller)
           algorithm=ppo:               PromptDataModule    ─► PPOModule (rollouts, reward, value head)
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from transformers import PreTrainedTokenizerBase

from dpo_lightning.data.collate import collate_function
from dpo_lightning.data.datamodule import PreferenceDataModule
from dpo_lightning.data.prompts import PromptDataModule
from dpo_lightning.data.sources.base import is_ranked
from dpo_lightning.data.tokenize import TokenizeSettings
from dpo_lightning.eval.callback import SampleEvaluation
from dpo_lightning.eval.sampling import ValidationSamples
from dpo_lightning.instantiate import build, settings
from dpo_lightning.models.loading import check_loadable, load_tokenizer
from dpo_lightning.models.reference import Precomputed
from dpo_lightning.models.reference_cache import precompute_reference
from dpo_lightning.models.sharding import full_state_dict
from dpo_lightning.online.module import CountsRollouts, OnlineDPOModule, rollout_report
from dpo_lightning.online.ppo import PPOModule
from dpo_lightning.online.rollouts import Rollouts
from dpo_lightning.online.settings import online_settings, ppo_settings
from dpo_lightning.runtime.checks import check_rankings, validate_config
from dpo_lightning.runtime.console import print_config_tree, progress_bar, save_resolved_config
from dpo_lightning.runtime.export import export_policy, write_model_card
from dpo_lightning.runtime.resume import resume_checkpoint
from dpo_lightning.runtime.secrets import redacted_argv, redacted_config
from dpo_lightning.runtime.summary import RunSummary
from dpo_lightning.runtime.trainer import build_trainer
from dpo_lightning.training.module import DPOLitModule
from dpo_lightning.training.reward_model import RewardModelModule
from dpo_lightning.training.throughput import Throughput

log = logging.getLogger(__name__)


def _plain(node: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(node, resolve=True)


def build_datamodule(cfg: DictConfig, tokenizer: PreTrainedTokenizerBase) -> PreferenceDataModule:
    """The task's source (`task.source`, built by its `_target_`) wrapped in a PreferenceDataModule with the
    task's tokenization settings (`task.tokenize`) and the `data` batching; an online run's is a PromptDataModule
    (training prompts; its rollouts are cut to fit `task.tokenize` beside them)."""
    task = cfg.task
    tokenize = settings(TokenizeSettings, task.tokenize, "task.tokenize")
    options = dict(
        tokenize=tokenize,
        batch_size=cfg.data.batch_size,
        eval_batch_size=cfg.data.eval_batch_size,
        num_workers=cfg.data.num_workers,
        layout=cfg.data.layout,
        packing_max_tokens=cfg.data.packing_max_tokens,
        group_by_length=cfg.data.group_by_length,
        rankings=cfg.data.rankings,
        ranking_pairs=cfg.data.ranking_pairs,
        skip_bad_rows=task.skip_bad_rows,
        streaming=task.streaming,
        shuffle_buffer=task.shuffle_buffer,
        seed=cfg.seed,
    )
    source = build(task.source, "task.source")
    if cfg.algorithm.name in ("online", "ppo"):
        on_policy = online_settings(cfg) if cfg.algorithm.name == "online" else ppo_settings(cfg)
        max_new_tokens = on_policy.rollout_sampling(tokenize).max_new_tokens
        max_prompts = getattr(on_policy, "max_prompts", None)
        return PromptDataModule(source, tokenizer, max_new_tokens=max_new_tokens, max_prompts=max_prompts, **options)
    return PreferenceDataModule(source, tokenizer, **options)


def build_module(cfg: DictConfig, tokenizer: PreTrainedTokenizerBase, kl_reference: bool) -> L.LightningModule:
    """The LightningModule of `algorithm`: DPOLitModule (offline), OnlineDPOModule (online: its rollouts' sampler
    and labeller built here, so a labeller that cannot load stops the run before training), RewardModelModule
    (reward_model: the policy's architecture with a one-output head, trained on the same pairs)."""
    trained = dict(
        model=_plain(cfg.model),
        loss=_plain(cfg.loss),
        optimizer=_plain(cfg.optimizer),
        reference=_plain(cfg.reference),
        kl_reference=kl_reference,
    )
    if cfg.algorithm.name == "reward_model":
        return RewardModelModule(
            trained["model"],
            trained["optimizer"],
            center_coefficient=cfg.algorithm.center_coefficient,
            margin=cfg.algorithm.margin,
        )
    tokenize = settings(TokenizeSettings, cfg.task.tokenize, "task.tokenize")
    if cfg.algorithm.name == "ppo":
        ppo = ppo_settings(cfg)
        labeller = build(cfg.algorithm.labeller, "algorithm.labeller")
        collate = collate_function(cfg.data.layout, tokenizer.pad_token_id, cfg.data.packing_max_tokens)
        return PPOModule(
            settings=ppo, sampling=ppo.rollout_sampling(tokenize), labeller=labeller, tokenizer=tokenizer,
            collate=collate, **trained,
        )  # fmt: skip
    if cfg.algorithm.name != "online":
        return DPOLitModule(**trained)
    online = online_settings(cfg)
    rollouts = Rollouts(
        tokenizer,
        online.rollout_sampling(tokenize),
        online.samples_per_prompt,
        build(cfg.algorithm.labeller, "algorithm.labeller"),
        online.skip_bad_samples,
    )
    collate = collate_function(cfg.data.layout, tokenizer.pad_token_id, cfg.data.packing_max_tokens, online.pairs)
    return OnlineDPOModule(rollouts=rollouts, collate=collate, **trained)


def build_sample_evaluation(
    cfg: DictConfig, tokenizer: PreTrainedTokenizerBase, output_dir: Path
) -> SampleEvaluation | None:
    """The validation-time sampler (None with `samples.num_prompts=0`), its reward loaded now: a reward model
    that cannot work stops the run before training."""
    samples = settings(ValidationSamples, cfg.samples, "samples")
    if samples.num_prompts == 0 or cfg.algorithm.name == "reward_model":  # a reward model writes no samples
        return None
    reward = build(cfg.task.reward, "task.reward") if cfg.task.get("reward") else None
    return SampleEvaluation(
        samples.num_prompts, tokenizer, samples.sampling, reward, output_dir / "samples", samples.kl
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
    if "val/accuracy" in metrics:
        log.info(
            "reward model: val/accuracy %.3f (chance 0.5) · val/margin %.3f · val/loss %.4f (log 2 = 0.6931 at r ≡ 0)",
            metrics["val/accuracy"],
            metrics["val/margin"],
            metrics["val/loss"],
        )
    if "val/reward" in metrics:
        log.info(
            "val/reward %.3f (the reference's samples: %.3f) · val/kl %.2f nats",
            metrics["val/reward"],
            metrics.get("val/reference_reward", float("nan")),
            metrics.get("val/kl", float("nan")),
        )
    if "train/kl_coef" in metrics:
        log.info("PPO: train/reward %.3f · train/kl %.2f nats · train/kl_coef %.4f", metrics["train/reward"],
                 metrics["train/kl"], metrics["train/kl_coef"])  # fmt: skip
    rate = f"train/pairs_per_s {metrics['train/pairs_per_s']:.1f} · " if "train/pairs_per_s" in metrics else ""
    log.info("%s%s steps · run folder %s", rate, global_step, output_dir)


def run(cfg: DictConfig, output_dir: Path, choices: dict[str, str] | None = None) -> dict[str, Any]:
    """Train as configured; write `summary.json` (always) and `policy/` (on success) into `output_dir`.

    `choices`: the option chosen in each config group (`loss: dpo`, …), recorded in the summary.
    """
    started = time.perf_counter()
    summary = RunSummary(output_dir, redacted_config(cfg))
    summary.update(choices=choices or {})
    trainer: L.Trainer | None = None
    try:
        save_resolved_config(cfg, output_dir)
        validate_config(cfg)
        bar = progress_bar(cfg)  # checks the progress_bar key before any model loads
        check_loadable(cfg.model)  # weights and tokenizer can load (one line if not), before any data is read
        print_config_tree(cfg)  # a config that cannot run prints its one error line only
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        tokenizer = load_tokenizer(cfg.model)
        datamodule = build_datamodule(cfg, tokenizer)
        check_rankings(cfg, is_ranked(datamodule.source))
        sample_evaluation = build_sample_evaluation(cfg, tokenizer, output_dir)
        module = build_module(cfg, tokenizer, kl_reference=sample_evaluation is not None and sample_evaluation.kl)
        throughput = Throughput()
        trainer = build_trainer(cfg, output_dir, [throughput, *filter(None, [sample_evaluation, bar])])
        with redacted_argv():  # W&B starts its run here and records the command line
            for logger in trainer.loggers:
                logger.log_hyperparams(redacted_config(cfg))
        if isinstance(getattr(module, "strategy", None), Precomputed) and module.objective.needs_reference:
            module.strategy.cache_file = str(precompute_reference(cfg, datamodule, trainer))
        start = cfg.ckpt_path or resume_checkpoint(cfg.resume, output_dir)  # None: a fresh start
        if start is not None:
            log.info("continuing from %s", start)
        trainer.fit(module, datamodule=datamodule, ckpt_path=start)
        train_metrics = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
        trainer.validate(module, datamodule=datamodule, verbose=False)
        summary.add_metrics(train_metrics | dict(trainer.callback_metrics) | throughput.totals(trainer.world_size))
        summary.update(status="interrupted" if trainer.interrupted else "completed", data=datamodule.report())
        if isinstance(module, CountsRollouts):  # every rank's sample counts, summed
            summary.update(rollouts=rollout_report(module))
        reward_model = isinstance(module, RewardModelModule)
        # trainer=fsdp: the policy's full state, gathered from the shards (on every rank)
        policy_state = None if reward_model else full_state_dict(module.policy)
        if trainer.is_global_zero:
            if reward_model:  # a sequence classifier with one output
                folder = module.export(output_dir / "policy", tokenizer)
            else:
                exported = module.strategy.exported(module.policy)  # reference=lora: merged, or the adapters only
                folder = export_policy(exported, tokenizer, output_dir / "policy", policy_state)
            summary.update(policy=str(folder))
            with redacted_argv():  # policy/README.md, the model card: its command line with secrets redacted
                write_model_card(folder, summary.content, datamodule.source)
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
