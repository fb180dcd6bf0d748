"""Iterative DPO (Xiong et al. 2024): rounds of pairs sampled from the latest policy and offline training on them.

    round r:   policy_{r−1} ─► K samples of each of the round's prompts ─► labeller ─► best vs worst pairs
               ─► round_<r>/pairs/{train,validation}.parquet (as `cli.pairs` writes them)
               ─► an offline run (the `loss`, `reference`, `optimizer`, `trainer`, … of the command) from
                  policy_{r−1} on those pairs ─► round_<r>/ (a whole run folder: summary.json, policy/, checkpoints/)
    each r:    reward of policy_r's samples and KL(policy_r ‖ policy_0) on the validation prompts ─► rounds.csv

policy_0 is the command's model (`model.init_from`: the SFT model). Round r samples the training prompts
[(r−1)·n, r·n) of the task (n = `algorithm.prompts_per_round`; the prompts cycle when the task has fewer), so each
round sees fresh prompts; its validation pairs come from the first `algorithm.validation_prompts` validation prompts,
and the rounds table scores every policy on the first `samples.num_prompts` of them. Each round's reference is its
start, policy_{r−1} (the round's `val/kl` is to it); the table's `kl` is to policy_0 — the frontier's x-axis.

Resuming (`resume=auto` or `resume=<folder>`): a round whose summary says completed is kept, a round's pairs are
generated once (their provenance.json marks them done), and an unfinished round continues from its last.ckpt.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import time
from collections import Counter
from itertools import cycle, islice
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from dpo_lightning.data.prompts import task_prompts
from dpo_lightning.data.tokenize import PairTokenizer, TokenizeSettings
from dpo_lightning.errors import DataError
from dpo_lightning.eval.labellers import Labeller
from dpo_lightning.eval.pairs import generate_split, write_pairs
from dpo_lightning.eval.policy_eval import reward_and_kl
from dpo_lightning.eval.rewards import Reward
from dpo_lightning.eval.sampling import ValidationSamples
from dpo_lightning.instantiate import build, settings
from dpo_lightning.models.loading import build_model, load_tokenizer
from dpo_lightning.online.settings import iterative_settings
from dpo_lightning.runtime.checks import validate_config
from dpo_lightning.runtime.console import save_resolved_config
from dpo_lightning.runtime.run import run
from dpo_lightning.runtime.secrets import redacted_config
from dpo_lightning.runtime.summary import RunSummary

log = logging.getLogger(__name__)

ROUND_COLUMNS = ("round", "pairs", "ties", "reward", "reward_se", "kl", "kl_se", "val_kl", "val_loss", "seconds")


def _completed(folder: Path) -> bool:
    summary = folder / "summary.json"
    return summary.is_file() and json.loads(summary.read_text()).get("status") == "completed"


def round_config(cfg: DictConfig, pairs: Path, start: str | None) -> DictConfig:
    """The offline run of a round: the command's config with the round's pairs as `task=local` data (the task's
    tokenization and reward kept), `model.init_from` = the round's start, and resuming its own folder."""
    round_cfg = cfg.copy()
    with open_dict(round_cfg):
        round_cfg.algorithm = {"name": "offline"}
        round_cfg.task.source = {
            "_target_": "dpo_lightning.data.sources.local.LocalSource",
            "path": str(pairs / "train.parquet"),
            "val_path": str(pairs / "validation.parquet"),
        }
        round_cfg.task.streaming = False
        round_cfg.model.init_from = start
        round_cfg.resume = "auto"  # continue the round's last.ckpt if it has one
        round_cfg.ckpt_path = None
    return round_cfg


def run_rounds(cfg: DictConfig, output_dir: Path, choices: dict[str, str] | None = None) -> dict[str, Any]:
    """Every round of `algorithm=iterative` into `output_dir/round_<r>/`, the table into `rounds.csv`, and the
    command's own `summary.json` (the rounds, and the last round's metrics)."""
    started = time.perf_counter()
    summary = RunSummary(output_dir, redacted_config(cfg))
    summary.update(choices=choices or {})
    try:
        save_resolved_config(cfg, output_dir)
        validate_config(cfg)
        iterative = iterative_settings(cfg)
        tokenize = settings(TokenizeSettings, cfg.task.tokenize, "task.tokenize")
        sampling = iterative.rollout_sampling(tokenize)
        source = build(cfg.task.source, "task.source")
        skipped: Counter[str] = Counter()
        train_prompts = list(
            islice(task_prompts(source, "train", skipped), iterative.rounds * iterative.prompts_per_round)
        )
        val_prompts = list(islice(task_prompts(source, "validation", skipped), iterative.validation_prompts))
        if not train_prompts or not val_prompts:
            raise DataError(f"{source.origin('train' if not train_prompts else 'validation')}: no prompts")
        labeller: Labeller = build(cfg.algorithm.labeller, "algorithm.labeller")
        reward: Reward = build(cfg.task.reward, "task.reward")
        evaluation = settings(ValidationSamples, cfg.samples, "samples")
        initial_config = OmegaConf.to_container(cfg.model, resolve=True)
        tokenizer = load_tokenizer(initial_config)
        encode = PairTokenizer(tokenizer, tokenize)
        eval_prompts = [
            pair.prompt_ids for pair, _ in encode(val_prompts, [""] * len(val_prompts), [""] * len(val_prompts))
        ]
        eval_prompts = eval_prompts[: max(evaluation.num_prompts, 1)]
        initial = build_model(initial_config)
        rows = [
            _round_row(0, {}, reward_and_kl(initial, initial, eval_prompts, tokenizer, evaluation.sampling, reward), {})
        ]
        start: str | None = initial_config.get("init_from")
        prompts = cycle(train_prompts)
        for r in range(1, iterative.rounds + 1):
            folder = output_dir / f"round_{r}"
            round_prompts = list(islice(prompts, iterative.prompts_per_round))
            pairs = folder / "pairs"
            counts = _pairs(pairs, start, initial_config, tokenizer, encode, labeller, iterative, sampling,
                            {"train": round_prompts, "validation": val_prompts})  # fmt: skip
            if not _completed(folder):
                log.info(
                    "round %d of %d: offline training from %s on %s",
                    r,
                    iterative.rounds,
                    start or "the initial model",
                    pairs,
                )
                run(round_config(cfg, pairs, start), folder, choices)
            start = str(folder)
            policy = build_model({**initial_config, "init_from": start})
            point = reward_and_kl(policy, initial, eval_prompts, tokenizer, evaluation.sampling, reward)
            rows.append(_round_row(r, counts, point, json.loads((folder / "summary.json").read_text())))
            log.info(
                "round %d: reward %.3f ± %.3f · KL to the initial policy %.2f ± %.2f",
                r,
                point.reward,
                point.reward_se,
                point.kl,
                point.kl_se,
            )
        _write_rounds(rows, output_dir)
        summary.update(status="completed", rounds=rows, data={"unusable_rows": dict(skipped)})
        summary.add_metrics(
            json.loads((output_dir / f"round_{iterative.rounds}" / "summary.json").read_text())["metrics"]
        )
        summary.update(policy=str(output_dir / f"round_{iterative.rounds}" / "policy"))
    except BaseException as error:
        summary.fail(error)
        raise
    finally:
        summary.update(wall_time_s=round(time.perf_counter() - started, 3))
        summary.write()
    return summary.content


def _pairs(
    folder: Path,
    start: str | None,
    initial_config: dict[str, Any],
    tokenizer: Any,
    encode: PairTokenizer,
    labeller: Labeller,
    iterative: Any,
    sampling: Any,
    prompts: dict[str, list[str]],
) -> dict[str, Any]:
    """The round's pairs from its start policy (generated once: provenance.json marks them done); their counts."""
    provenance = folder / "provenance.json"
    if provenance.is_file():
        return json.loads(provenance.read_text())["splits"]
    model = build_model({**initial_config, "init_from": start})
    splits = {}
    for split, texts in prompts.items():
        rows, counts = generate_split(
            model, tokenizer, texts, encode, labeller, iterative.samples_per_prompt, iterative.min_margin, sampling
        )
        if not rows:
            raise DataError(f"round pairs ({split}): all {len(texts)} prompts gave tied samples; no pairs")
        write_pairs(rows, folder / f"{split}.parquet", {"policy": start, "split": split, **counts})
        splits[split] = counts
    provenance.write_text(json.dumps({"policy": start, "splits": splits}, indent=2) + "\n")
    return splits


def _round_row(r: int, counts: dict[str, Any], point: Any, summary: dict[str, Any]) -> dict[str, Any]:
    metrics = summary.get("metrics", {})
    train = counts.get("train", {})
    return {
        "round": r,
        "pairs": train.get("pairs"),
        "ties": train.get("ties"),
        **{key: value for key, value in dataclasses.asdict(point).items() if key != "samples"},
        "val_kl": metrics.get("val/kl"),
        "val_loss": metrics.get("val/loss"),
        "seconds": summary.get("wall_time_s"),
    }


def _write_rounds(rows: list[dict[str, Any]], output_dir: Path) -> None:
    with (output_dir / "rounds.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=ROUND_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
