"""Best-of-N: sample N responses from a policy, keep the one the labeller scores highest — the DPO paper's
inference-time baseline (its TL;DR figure), as points of the reward–KL frontier.

    prompts [P] ─► M samples each (one prefill per prompt) ─► labeller scores s [P, M], true reward r [P, M]
              ─► for each N: the M samples cut into M/N groups of N, the best-scored of each group kept
              ─► mean true reward of the kept samples ± standard error, and the KL of Best-of-N to the policy

All N share the same M samples (M ≥ max N), so the points differ only through N. The labeller picks, the task's
true reward scores the picks: with a trained reward model as labeller, the gap between the two is its
over-optimization.

KL(π_BoN ‖ π). For continuous scores, Best-of-N of π has density N·F(s)^{N−1}·π(y) (F: the CDF of the score under
π), so KL = E[log N + (N−1)·log F(s)] = log N − (N−1)/N — the analytic value (Stiennon et al. 2020; Beirami et al.
2024 show it is an upper bound, reached without ties). `measured` estimates it from the samples themselves: the
KL of Best-of-N of the empirical distribution of the prompt's M samples, over the score levels ℓ (tied samples
form one level, which Best-of-N then picks as a whole):

    P_BoN(ℓ) = F̂(ℓ)^N − F̂(ℓ⁻)^N,   π̂(ℓ) = (samples at ℓ) / M,   KL_P = Σ_ℓ P_BoN(ℓ) log(P_BoN(ℓ) / π̂(ℓ))

averaged over prompts (± standard error). It is exact for sampling from those M samples, at most log M, and below
the analytic value where the labeller ties (a discrete reward, e.g. VADER's 0 for neutral text) or N approaches M;
it converges to the sequence-level KL of selecting by score as M grows (M ≫ N).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from dpo_lightning.data.prompts import PromptTokenizer, task_prompts
from dpo_lightning.data.tokenize import TokenizeSettings
from dpo_lightning.errors import ConfigError, DataError
from dpo_lightning.eval.kl import mean_and_standard_error
from dpo_lightning.eval.labellers import Labeller
from dpo_lightning.eval.pairs import sampling_settings
from dpo_lightning.eval.rewards import Reward
from dpo_lightning.eval.sampling import completion_text, sample_completions
from dpo_lightning.instantiate import build, settings
from dpo_lightning.models.loading import build_model, init_from_folder, load_tokenizer

log = logging.getLogger(__name__)


def analytic_kl(n: int) -> float:
    """log N − (N − 1)/N, the KL of Best-of-N to the policy for continuous scores (module docstring)."""
    return math.log(n) - (n - 1) / n


def empirical_kl(scores: Sequence[float], n: int) -> float:
    """The KL of Best-of-`n` of the empirical distribution of `scores` (one prompt's M samples) to that
    distribution, over the score levels (module docstring)."""
    count = len(scores)
    kl, below = 0.0, 0
    for _, at in sorted(Counter(scores).items()):  # each level, lowest first, with its number of samples
        p_best = ((below + at) / count) ** n - (below / count) ** n
        if p_best > 0:
            kl += p_best * math.log(p_best * count / at)
        below += at
    return kl


def best_in_groups(scores: torch.Tensor, n: int) -> torch.Tensor:
    """[P, M] labeller scores → [P, M/n] index of the best-scored sample of each group of n consecutive samples
    (the first of equals)."""
    prompts, samples = scores.shape
    if samples % n:
        raise ValueError(f"N = {n} does not divide the {samples} samples per prompt")
    groups = scores.view(prompts, samples // n, n)
    return groups.argmax(dim=-1) + torch.arange(0, samples, n).unsqueeze(0)  # argmax: the first maximum


@dataclass(frozen=True)
class BestOfNPoint:
    """One N's frontier point: the true reward of the kept samples (mean, standard error over the P·M/N picks),
    the labeller's score of them, the analytic KL and the measured one (mean, standard error over prompts)."""

    n: int
    reward: float
    reward_se: float
    score: float
    kl: float
    kl_measured: float
    kl_measured_se: float
    picks: int


def best_of_n_points(scores: torch.Tensor, rewards: torch.Tensor, ns: Sequence[int]) -> list[BestOfNPoint]:
    """Best-of-N frontier points from [P, M] labeller scores and [P, M] true rewards of the same samples."""
    points = []
    for n in ns:
        kept = best_in_groups(scores, n)  # [P, M/n]
        reward, reward_se = mean_and_standard_error(rewards.gather(1, kept).flatten())
        measured = torch.tensor([empirical_kl(row.tolist(), n) for row in scores], dtype=torch.float64)
        kl_measured, kl_measured_se = mean_and_standard_error(measured)
        points.append(
            BestOfNPoint(
                n,
                reward,
                reward_se,
                float(scores.gather(1, kept).mean()),
                analytic_kl(n),
                kl_measured,
                kl_measured_se,
                kept.numel(),
            )
        )
    return points


CSV_COLUMNS = ("series", "n", "reward", "reward_se", "score", "kl", "kl_measured", "kl_measured_se", "picks")


def check_best_of_n_config(cfg: DictConfig) -> list[int]:
    """Config mistakes, before any model loads; the sorted distinct N."""
    missing = sorted(OmegaConf.missing_keys(cfg), key=lambda key: (key.count("."), key))
    if missing:
        raise ConfigError(missing[0], "required but not set (give it on the command line)")
    ns = list(cfg.ns)
    if not ns or not all(isinstance(n, int) and n >= 1 for n in ns):
        raise ConfigError("ns", f"must be a list of integers ≥ 1, got {ns}")
    samples = cfg.samples_per_prompt or max(ns)
    bad = [n for n in ns if samples % n]
    if bad:
        raise ConfigError("samples_per_prompt", f"{samples} samples per prompt are not divisible by N = {bad}")
    if not (isinstance(cfg.num_prompts, int) and cfg.num_prompts >= 1):
        raise ConfigError("num_prompts", f"must be an integer ≥ 1, got {cfg.num_prompts!r}")
    if not cfg.task.get("reward"):
        raise ConfigError("task.reward", "Best-of-N reports the true reward of the kept samples; this task has none")
    return sorted(set(ns))


def run_best_of_n(cfg: DictConfig, out: Path) -> list[BestOfNPoint]:
    """Sample, label and score; write `best_of_n.csv` and `best_of_n.json` (points, counts, settings) to `out`."""
    ns = check_best_of_n_config(cfg)
    samples_per_prompt = cfg.samples_per_prompt or max(ns)
    sampling = sampling_settings(cfg)
    tokenize = settings(TokenizeSettings, cfg.task.tokenize, "task.tokenize")
    try:
        init_from_folder(cfg.policy)
    except ConfigError as error:  # named by the key the user set, not model.init_from
        raise ConfigError("policy", str(error).removeprefix(f"{error.key}: ")) from None
    source = build(cfg.task.source, "task.source")
    texts = list(islice(task_prompts(source, cfg.split, Counter()), cfg.num_prompts))
    if not texts:
        raise DataError(f"{source.origin(cfg.split)}: no prompts")
    reward: Reward = build(cfg.task.reward, "task.reward")
    labeller: Labeller = build(cfg.labeller, "labeller")
    model_config = {**OmegaConf.to_container(cfg.model, resolve=True), "init_from": cfg.policy}
    tokenizer = load_tokenizer(model_config)
    device = torch.device(
        "cuda" if cfg.device == "auto" and torch.cuda.is_available() else cfg.device.replace("auto", "cpu")
    )
    model = build_model(model_config).to(device)
    prompt_ids = [ids for ids, _ in PromptTokenizer(tokenizer, tokenize, sampling.max_new_tokens)(texts)]
    started = time.perf_counter()
    samples = sample_completions(model, prompt_ids, tokenizer, sampling, num_samples=samples_per_prompt)
    pairs = [
        completion_text(tokenizer, prompt_ids[k // samples_per_prompt], sample) for k, sample in enumerate(samples)
    ]
    prompts = [prompt for prompt, _ in pairs[::samples_per_prompt]]
    groups = [[c for _, c in pairs[p * samples_per_prompt : (p + 1) * samples_per_prompt]] for p in range(len(prompts))]
    labels = labeller.label(prompts, groups)
    unscored = sum(score is None for row in labels.scores for score in row)
    scores = torch.tensor([[-math.inf if s is None else s for s in row] for row in labels.scores], dtype=torch.float64)
    rewards = torch.tensor(
        reward([prompt for prompt in prompts for _ in range(samples_per_prompt)], [c for _, c in pairs]),
        dtype=torch.float64,
    ).view(len(prompts), samples_per_prompt)
    points = best_of_n_points(scores, rewards, ns)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "best_of_n.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows({"series": "best_of_n", **dataclasses.asdict(point)} for point in points)
    record = {
        "policy": str(init_from_folder(cfg.policy).resolve()),
        "prompts": len(prompts),
        "samples_per_prompt": samples_per_prompt,
        "counts": {**labels.counts, "unscored_samples": unscored},
        "reasons": dict(labels.reasons),
        "seconds": round(time.perf_counter() - started, 1),
        "settings": OmegaConf.to_container(cfg, resolve=True),
        "points": [dataclasses.asdict(point) for point in points],
    }
    (out / "best_of_n.json").write_text(json.dumps(record, indent=2) + "\n")
    for point in points:
        log.info(
            "N = %d: reward %.3f ± %.3f · KL %.3f (measured %.3f ± %.3f) · labeller score %.3f",
            point.n, point.reward, point.reward_se, point.kl, point.kl_measured, point.kl_measured_se, point.score,
        )  # fmt: skip
    return points
