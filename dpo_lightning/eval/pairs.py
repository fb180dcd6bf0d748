"""Preference pairs sampled from a model and labelled by a reward — the paper's IMDb recipe (§6.1).

    python -m dpo_lightning.cli.pairs policy=<SFT run> task=sentiment [samples_per_prompt=4] [num_prompts.train=…]

    task prompts ─► K samples each from the policy ─► task reward r(x, y_k) ─► chosen = argmax, rejected = argmin
                                                                            └─► <out>/{train,validation}.parquet

Each Parquet row holds `prompt`, `chosen`, `rejected` (what `task=local` reads), their rewards, and all K
`responses` with their `scores`; the file's schema metadata and `provenance.json` record where the pairs come
from (model folder and weights hash, task, reward, sampling settings, seed, counts). A prompt whose best and
worst samples score within `min_margin` of each other (always on equal scores) gives no pair, and empty samples
(the model ended at once; training rejects empty responses) are not ranked: such prompts and samples are counted
in the provenance (`ties`, `too_few_samples`, `empty_samples`), never silently dropped. Train on the result with

    python train.py task=local task.source.path=<out>/train.parquet task.source.val_path=<out>/validation.parquet \\
        model.init_from=<SFT run> reward@task.reward=<the task's reward>
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import Counter
from itertools import islice
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from omegaconf import DictConfig, OmegaConf

from dpo_lightning.data.prompts import task_prompts
from dpo_lightning.data.sources.base import SPLITS
from dpo_lightning.data.tokenize import PairTokenizer, TokenizeSettings
from dpo_lightning.errors import ConfigError, DataError
from dpo_lightning.eval.labellers import Labeller, RewardLabeller
from dpo_lightning.eval.rewards import Reward
from dpo_lightning.eval.sampling import SamplingSettings, completion_text, sample_completions
from dpo_lightning.instantiate import build, settings
from dpo_lightning.models.loading import build_model, init_from_folder, load_tokenizer
from dpo_lightning.models.reference_cache import weights_fingerprint

log = logging.getLogger(__name__)
PROVENANCE_KEY = b"dpo_lightning.provenance"  # Parquet schema-metadata key of the provenance JSON


def best_and_worst(scores: list[float], min_margin: float) -> tuple[int, int] | None:
    """(index of the highest score, index of the lowest) — the first of equals — or None if they differ by
    less than `min_margin` or not at all (a tie: no preference to learn)."""
    best = max(range(len(scores)), key=scores.__getitem__)
    worst = min(range(len(scores)), key=scores.__getitem__)
    gap = scores[best] - scores[worst]
    return None if gap == 0 or gap < min_margin else (best, worst)


def generate_split(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: list[str],
    encode: PairTokenizer,
    labeller: Labeller,
    samples_per_prompt: int,
    min_margin: float,
    settings: SamplingSettings,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Rows (one per prompt with a preference) and counts {prompts, pairs, ties, too_few_samples,
    empty_samples, unscored_samples, truncated_prompts}. Empty samples (the model ended at once; training rejects
    empty responses) and samples the labeller could not score are not ranked, and a prompt left with fewer than two
    samples gives no pair."""
    encoded = encode(prompts, [""] * len(prompts), [""] * len(prompts))
    prompt_ids = [pair.prompt_ids for pair, _ in encoded]
    repeated = [ids for ids in prompt_ids for _ in range(samples_per_prompt)]  # [P·K], prompt-major
    completions = sample_completions(model, repeated, tokenizer, settings)  # `batch_size` of the P·K rows a call
    texts = [
        completion_text(tokenizer, prompt, completion) for prompt, completion in zip(repeated, completions, strict=True)
    ]
    groups = [texts[p * samples_per_prompt : (p + 1) * samples_per_prompt] for p in range(len(prompts))]
    labels = labeller.label([group[0][0] for group in groups], [[c for _, c in group] for group in groups])
    rows, ties, too_few, empty, unscored = [], 0, 0, 0, 0
    for group, group_scores in zip(groups, labels.scores, strict=True):
        kept = [k for k, (_, text) in enumerate(group) if text.strip() and group_scores[k] is not None]
        empty += sum(not text.strip() for _, text in group)
        unscored += sum(score is None for score in group_scores)
        responses, block_scores = [group[k][1] for k in kept], [float(group_scores[k]) for k in kept]
        if len(kept) < 2:
            too_few += 1
            continue
        ranked = best_and_worst(block_scores, min_margin)
        if ranked is None:
            ties += 1
            continue
        best, worst = ranked
        rows.append(
            {
                "prompt": group[0][0],
                "chosen": responses[best],
                "rejected": responses[worst],
                "chosen_reward": block_scores[best],
                "rejected_reward": block_scores[worst],
                "responses": responses,
                "scores": block_scores,
            }
        )
    truncated = sum(truncation.prompt for _, truncation in encoded)
    counts = {"prompts": len(prompts), "pairs": len(rows), "ties": ties, "too_few_samples": too_few}
    return rows, counts | {"empty_samples": empty, "unscored_samples": unscored, "truncated_prompts": truncated}


def write_pairs(rows: list[dict[str, Any]], path: Path, provenance: dict[str, Any]) -> Path:
    """`rows` as Parquet, with the provenance JSON in the schema metadata."""
    schema = pa.schema(
        [
            ("prompt", pa.string()),
            ("chosen", pa.string()),
            ("rejected", pa.string()),
            ("chosen_reward", pa.float64()),
            ("rejected_reward", pa.float64()),
            ("responses", pa.list_(pa.string())),
            ("scores", pa.list_(pa.float64())),
        ],
        metadata={PROVENANCE_KEY: json.dumps(provenance)},
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def check_pairs_config(cfg: DictConfig) -> None:
    """Config mistakes, before any model loads."""
    missing = sorted(OmegaConf.missing_keys(cfg), key=lambda key: (key.count("."), key))  # policy first
    if missing:
        raise ConfigError(missing[0], "required but not set (give it on the command line)")
    if not isinstance(cfg.samples_per_prompt, int) or cfg.samples_per_prompt < 2:
        raise ConfigError("samples_per_prompt", f"must be an integer ≥ 2, got {cfg.samples_per_prompt!r}")
    if cfg.min_margin < 0:
        raise ConfigError("min_margin", f"must be ≥ 0, got {cfg.min_margin}")
    for split, count in cfg.num_prompts.items():
        if split not in SPLITS or not isinstance(count, int) or count < 1:
            raise ConfigError(f"num_prompts.{split}", f"splits are {list(SPLITS)}, counts integers ≥ 1; got {count!r}")
    if not cfg.task.get("reward"):
        raise ConfigError("task.reward", "pair generation ranks samples by the task's reward; this task has none")
    try:
        init_from_folder(cfg.policy)
    except ConfigError as error:  # named by the key the user set, not model.init_from
        raise ConfigError("policy", str(error).removeprefix(f"{error.key}: ")) from None
    sampling_settings(cfg)
    settings(TokenizeSettings, cfg.task.tokenize, "task.tokenize")


def sampling_settings(cfg: DictConfig) -> SamplingSettings:
    """The `sampling` settings; a mistake is named by this command's key (`sampling.*`, not the run's `samples.*`)."""
    try:
        return settings(SamplingSettings, cfg.sampling, "sampling")
    except ConfigError as error:
        raise ConfigError(error.key.replace("samples.", "sampling.", 1), str(error).split(": ", 1)[1]) from None


def generate(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """Sample, label and write the pairs of every split in `cfg.num_prompts`; returns the provenance."""
    check_pairs_config(cfg)
    task = OmegaConf.to_container(cfg.task, resolve=True)
    source = build(cfg.task.source, "task.source")
    reward: Reward = build(cfg.task.reward, "task.reward")
    model_config = {**OmegaConf.to_container(cfg.model, resolve=True), "init_from": cfg.policy}
    tokenizer = load_tokenizer(model_config)
    device = torch.device(
        "cuda" if cfg.device == "auto" and torch.cuda.is_available() else cfg.device.replace("auto", "cpu")
    )
    model = build_model(model_config).to(device)
    sampling = sampling_settings(cfg)
    encode = PairTokenizer(tokenizer, settings(TokenizeSettings, cfg.task.tokenize, "task.tokenize"))
    provenance: dict[str, Any] = {
        "policy": str(init_from_folder(cfg.policy).resolve()),
        "policy_weights": weights_fingerprint(model),
        "task": {k: v for k, v in task.items() if k != "reward"},
        "reward": task["reward"],
        "samples_per_prompt": cfg.samples_per_prompt,
        "min_margin": cfg.min_margin,
        "sampling": OmegaConf.to_container(cfg.sampling),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(sys.argv),
        "splits": {},
    }
    for split, count in cfg.num_prompts.items():
        started = time.perf_counter()
        skipped: Counter[str] = Counter()
        prompts = list(islice(task_prompts(source, split, skipped), count))
        if not prompts:
            raise DataError(f"{source.origin(split)}: no prompts")
        rows, counts = generate_split(
            model, tokenizer, prompts, encode, RewardLabeller(reward), cfg.samples_per_prompt, cfg.min_margin, sampling
        )
        if not rows:
            raise DataError(f"{split}: all {len(prompts)} prompts gave tied samples; no pairs (lower min_margin?)")
        if skipped:
            log.warning("%s: %d unusable rows left out of the prompts: %s", split, skipped.total(), dict(skipped))
        provenance["splits"][split] = {
            **counts,
            "unusable_rows": dict(skipped),
            "seconds": round(time.perf_counter() - started, 1),
        }
        # Each file's metadata: the shared provenance with its own split's counts (not those of the splits before it).
        own = provenance | {"splits": {split: provenance["splits"][split]}, "split": split}
        write_pairs(rows, out / f"{split}.parquet", own)
        mean = sum(r["chosen_reward"] + r["rejected_reward"] for r in rows) / (2 * len(rows))
        log.info(
            "%s: %d pairs from %d prompts (%d ties) · mean reward of the pair samples %.3f",
            split,
            counts["pairs"],
            counts["prompts"],
            counts["ties"],
            mean,
        )
    (out / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    log.info(
        "pairs in %s; train on them with: "
        "python train.py task=local task.source.path=%s task.source.val_path=%s model.init_from=%s",
        out,
        out / "train.parquet",
        out / "validation.parquet",
        cfg.policy,
    )
    return provenance


if __name__ == "__main__":  # the command of earlier versions
    print("error: the pairs command is now: python -m dpo_lightning.cli.pairs", file=sys.stderr)
    sys.exit(2)
