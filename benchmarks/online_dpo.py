"""Online DPO against Hugging Face TRL's `OnlineDPOTrainer`, and KV-cached sampling against uncached, in one run.

    pip install -e ".[bench]"        # TRL: a benchmark-only extra, never a runtime dependency
    python benchmarks/online_dpo.py [--steps 50] [--warmup 2] [--batch-size 8] [--max-new-tokens 32] [--lr 1e-3]
                                    [--sampling-repeats 7] [--threads N] [--quick] [--out FILE]

The workload, identical for both systems:
- model: the random-init tiny Llama (`models.loading.model_config("tiny")`, init seed 0, fp32, SDPA, dropout off;
  4 layers, width 128) and its shipped tokenizer, built by `build_model` in each process; the run checks that both
  systems start from the same weights (a digest of every parameter, printed);
- prompts: the `task=sentiment` prompts (movie-review openings, `SentimentSource` with the task config's seed), the
  first `batch-size × (warmup + steps)` in data order, `batch-size` prompts per optimizer step on both sides (no
  shuffling). Ours tokenizes them with `PromptTokenizer` and the task's tokenization settings, TRL with the
  tokenizer (`add_special_tokens=False`); the run checks that the ids each system actually sampled from are equal
  (digests, printed);
- labeller: VADER's compound score of prompt + completion (`eval.rewards.sentiment_reward`): ours through
  `RewardLabeller(VaderReward())`, TRL through `reward_funcs=[vader_reward]`, a function calling `sentiment_reward`;
- sampling: K = 2 samples a prompt (TRL's fixed number), temperature 1, top_p 1, no top-k, no repetition penalty,
  `--max-new-tokens` new tokens at most, the model's `generate` with a KV cache;
- training: DPO sigmoid loss, β = 0.1, against a frozen copy of the initial policy (ours `FrozenCopy()`, TRL
  `ref_model=None`, which makes one); AdamW, constant learning rate `--lr`, weight decay 0, no gradient clipping,
  no warm-up, no activation checkpointing, fp32 on the CPU.

Each system trains in a fresh process (`reference_strategies._in_child`, with `trl_comparison._guarded`):
- ours: `OnlineDPOModule` (rollouts of K = 2, `algorithm.pairs=best_vs_worst`, the product's default layout
  `packed`) fitted by a Lightning Trainer on a DataLoader of `Prompts`. A step is timed from `on_train_batch_start`
  to `on_train_batch_end`: rollout (sampling, decoding, labelling), policy and reference forwards, backward,
  optimizer step.
- TRL: `OnlineDPOTrainer` (`trl.experimental.online_dpo`, `use_vllm=False`), timed by a `TrainerCallback` from
  `on_step_begin` to `on_step_end`: the same work.
The first `--warmup` steps are timed but excluded from the rates.

What is counted:
- steps/s: optimizer steps per second.
- pairs/s: preference pairs the loss trained on. Ours: one best-vs-worst pair per prompt whose two samples scored
  differently (a tied prompt gives no preference and is not trained on; a step whose prompts all tied trains on a
  placeholder with loss × 0 and counts 0 pairs). TRL: one pair per prompt, always — on a tie it takes the first
  sample as chosen (`first_half >= second_half`) and trains on it. "informative pairs/s" counts, for both, the
  pairs whose samples scored differently. The target — ours ≥ 3× TRL's pairs/s — is judged on trained pairs/s,
  which counts TRL's tied pairs in its favour.
- generated tokens/s: sampled completion tokens (EOS included, nothing after it: ours `Rollout.sample_tokens`, TRL
  the `completion_mask` of its `_generate`) per second of step time; and per second of generation alone (ours
  `Rollout.sampling_s`, which includes decoding the samples to text; TRL the time inside `_generate`).
- sanity, not a quality comparison: the loss of the first and last step (the first is ln 2 on both sides: policy
  = reference), the largest |θ − θ_ref| after training (both really updated the policy), and the labeller's mean
  score over the samples of the last (up to) 3 steps.

Sampling alone (a third process): `eval.sampling.sample_completions` of the untrained tiny model on the first
`batch-size` prompts with K = 4 samples a prompt, `max-new-tokens` new tokens, one generate call: (a) KV cache and
the prompt prefilled once for its K samples (the default), (b) KV cache, each of the B·K rows prefilling its own
prompt (`share_prompt=False`), (c) no KV cache (`use_cache=False`: every step recomputes the whole sequence). One
warm-up call each, then `--sampling-repeats` rounds in turns (a, b, c, a, b, c, …); tokens/s from the median
seconds. The same seed draws the same samples in (a) and (b); the table says whether (c)'s match too.

What differs between the two sides and cannot be made equal (the numbers include it):
- the trainer loops: Lightning's (ours logs its metrics with `log_dict` inside the timed step) and transformers'
  `Trainer` (accelerate's wrapping, TRL's per-step `stats` bookkeeping with `gather_for_metrics` calls inside the
  step; its `log` every `logging_steps` = 10 steps, after `on_step_end`, outside the timing);
- generation: ours left-pads the B prompts, prefills each prompt once and repeats its KV cache K times
  (`DynamicCache.batch_repeat_interleave`); TRL tokenizes the prompt texts, repeats the B prompts twice and runs
  `generate` on all 2B rows (each prefilling its own prompt), then `truncate_right`. Both use our tokenizer's
  ids and `GenerationConfig` sampling from softmax(logits) with the same settings; neither system can draw the
  other's samples (different RNG use), so the samples, the ties, the rewards and the losses after step 1 differ;
- training computation: ours collates the rollouts in the packed layout (a prompt computed once beside its two
  responses, no padding) and computes log-probs on response positions only; TRL concatenates left-padded prompts
  and right-padded completions ([2B, P + C] with padding) and takes a full-vocabulary log-softmax at every
  completion position, for the policy and for the reference;
- text: ours scores the decoded prompt + the completion text as `completion_text` cuts it (decode(prompt +
  completion) minus decode(prompt)); TRL scores the original prompt text + `batch_decode(completion)`; with this
  tokenizer the texts can differ in a leading space at most;
- ties: ours drops a tied prompt, TRL trains on it (see pairs/s above);
- data collation: TRL's `DPODataCollatorWithPadding` over a `datasets.Dataset` of prompt texts; ours a `Prompts`
  batch of pre-tokenized ids.

Other load on the machine slows a multi-threaded CPU run far more than its share, and not evenly: run it on an
idle machine (on 2 cores shared with a test run, 2 torch threads made a step of either system 70–100× slower than
1 thread did; `--threads 1` is the fallback). With the defaults it takes about 1.5 minutes on 2 idle cores.
`--quick` (1 warm-up + 2 measured steps, 2 sampling rounds; about 35 s) is a smoke check, not a measurement.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import multiprocessing
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

# Only the standard library at module level: each system's process imports its own (a spawned child re-imports
# this module).

BETA = 0.1
SAMPLES_PER_PROMPT = 2  # TRL's OnlineDPOTrainer: always 2 completions a prompt, one pair
SAMPLING_K = 4  # the sampling-alone comparison
LAYOUT = "packed"  # the product's default `data.layout`
LAST_STEPS = 3  # the mean reward column: the labeller's mean score over the last steps
TARGET_PAIRS = 3.0  # ours ≥ 3× TRL's pairs/s


@dataclass(frozen=True)
class Workload:
    """Everything a child process needs to train or sample: plain values, pickled to the child."""

    prompt_texts: list[str]  # the trained prompts, in order: batch_size a step
    prompt_ids: list[list[int]]  # ours' tokenization of them
    batch_size: int
    warmup: int
    steps: int
    lr: float
    max_new_tokens: int
    threads: int | None
    sampling_repeats: int

    @property
    def total_steps(self) -> int:
        return self.warmup + self.steps


# ---------------------------------------------------------------------------------------------- the workload


def sentiment_prompts(count: int) -> list[str]:
    """The first `count` training prompts of `task=sentiment` (its source's seed and margin from the task config,
    just enough generated rows), distinct, in data order."""
    from omegaconf import OmegaConf

    from dpo_lightning.conf import CONF_DIR
    from dpo_lightning.data.prompts import task_prompts
    from dpo_lightning.data.sources.sentiment import SentimentSource
    from dpo_lightning.eval.rewards import VaderReward

    task = OmegaConf.load(CONF_DIR / "task" / "sentiment.yaml").source
    source = SentimentSource(
        labeller=VaderReward(), num_train_pairs=count, num_val_pairs=1, seed=task.seed, min_margin=task.min_margin
    )
    return list(task_prompts(source, "train"))[:count]


def tokenize_prompts(texts: list[str], max_new_tokens: int) -> tuple[list[list[int]], int]:
    """Ours' prompt ids (`PromptTokenizer` with the sentiment task's tokenization settings) and how many were cut."""
    from omegaconf import OmegaConf

    from dpo_lightning.conf import CONF_DIR
    from dpo_lightning.data.prompts import PromptTokenizer
    from dpo_lightning.data.tokenize import TokenizeSettings
    from dpo_lightning.models.loading import load_tokenizer, model_config

    settings = TokenizeSettings(**OmegaConf.to_container(OmegaConf.load(CONF_DIR / "task" / "sentiment.yaml").tokenize))
    encoded = PromptTokenizer(load_tokenizer(model_config("tiny")), settings, max_new_tokens)(texts)
    return [ids for ids, _ in encoded], sum(cut for _, cut in encoded)


def ids_digest(rows: list[list[int]]) -> str:
    """A hash of token-id lists, in order: equal iff both systems sampled from the same prompt ids."""
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def weights_digest(model) -> str:
    """A hash of every parameter's name and bytes: equal iff both systems start from the same weights."""
    digest = hashlib.sha256()
    for name, parameter in model.named_parameters():
        digest.update(name.encode())
        digest.update(parameter.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def max_difference(policy, reference) -> float:
    """max |θ − θ_ref| over all parameters (0: the policy never moved)."""
    import torch

    with torch.no_grad():
        return max(
            float((a - b).abs().max())
            for a, b in zip(policy.parameters(), reference.parameters(), strict=True)
            if a.numel()
        )


def _threads(work: Workload) -> int:
    """Set this process's torch threads (`--threads`; default torch's) and return the count in use."""
    import torch

    if work.threads:
        torch.set_num_threads(work.threads)
    return torch.get_num_threads()


def _mean_score(scores: list[float]) -> float:
    finite = [s for s in scores if math.isfinite(s)]
    return sum(finite) / len(finite) if finite else math.nan


# ---------------------------------------------------------------------------------------------- ours


def _ours(queue, work: Workload) -> None:
    """Train `OnlineDPOModule` with a Lightning Trainer; per-step seconds, pairs, rollout counts, losses."""
    import lightning as L
    from torch.utils.data import DataLoader
    from trl_comparison import _max_rss_mib

    from dpo_lightning.data.collate import collate_function
    from dpo_lightning.data.prompts import Prompts
    from dpo_lightning.eval.labellers import RewardLabeller
    from dpo_lightning.eval.rewards import VaderReward
    from dpo_lightning.eval.sampling import SamplingSettings
    from dpo_lightning.models.loading import load_tokenizer, model_config
    from dpo_lightning.models.reference import FrozenCopy
    from dpo_lightning.online.module import OnlineDPOModule
    from dpo_lightning.online.rollouts import Rollout, Rollouts

    threads = _threads(work)
    config = model_config("tiny")
    tokenizer = load_tokenizer(config)

    class RecordedRollouts(Rollouts):
        """Rollouts that keep the latest rollout (tokens generated, sampling seconds, ties, mean score)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.last: Rollout | None = None
            self.prompts: list[list[int]] = []  # every prompt sampled from, in order

        def __call__(self, policy, prompts, *args, **kwargs) -> Rollout:
            self.prompts.extend(prompts)
            self.last = super().__call__(policy, prompts, *args, **kwargs)
            return self.last

    sampling = SamplingSettings(max_new_tokens=work.max_new_tokens, batch_size=work.batch_size, seed=0)
    rollouts = RecordedRollouts(tokenizer, sampling, SAMPLES_PER_PROMPT, RewardLabeller(VaderReward()))
    module = OnlineDPOModule(
        rollouts=rollouts,
        collate=collate_function(LAYOUT, tokenizer.pad_token_id, ranking_pairs="best_vs_worst"),
        model=config,
        loss={"_target_": "dpo_lightning.losses.dpo.DPO", "beta": BETA},
        optimizer={"_target_": "torch.optim.AdamW", "lr": work.lr, "weight_decay": 0.0, "warmup_steps": 0},
        reference=FrozenCopy(),
    )
    module.configure_model()  # built here (Lightning would at fit start) to digest the initial weights
    initial = weights_digest(module.policy)
    steps: list[dict[str, Any]] = []

    class StepTimer(L.Callback):
        """Seconds from batch start to batch end (rollout, forwards, backward, optimizer step), and what it did."""

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            seconds = time.perf_counter() - self.start
            trained, rollout = pl_module.trained_batch, rollouts.last
            pairs = 0 if trained.placeholder else int(trained.pair_index.shape[1])
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            steps.append(
                {
                    "seconds": seconds,
                    "pairs": pairs,
                    "informative_pairs": pairs,  # ours trains only on prompts whose samples differ in score
                    "prompts": len(batch.ids),
                    "tied_prompts": rollout.counts["tied_prompts"],
                    "generated_tokens": rollout.sample_tokens,
                    "generation_s": rollout.sampling_s,
                    "loss": float(loss),
                    "score": rollout.mean_score,
                }
            )

    trainer = L.Trainer(
        max_steps=work.total_steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        default_root_dir=tempfile.mkdtemp(prefix="online-dpo-ours-"),
        callbacks=[StepTimer()],
    )
    loader = DataLoader(work.prompt_ids, batch_size=work.batch_size, shuffle=False, collate_fn=Prompts)
    trainer.fit(module, train_dataloaders=loader)
    with module.reference_model() as reference:
        moved = max_difference(module.policy, reference)
    queue.put(
        {
            "steps": steps,
            "weights": initial,
            "prompts": ids_digest(rollouts.prompts),
            "max_weight_change": moved,
            "threads": threads,
            "peak_mib": _max_rss_mib(),
        }
    )


# ---------------------------------------------------------------------------------------------- TRL


def trl_config(output_dir: str, work: Workload):
    """TRL's `OnlineDPOConfig` for the workload (module docstring): sampling of π itself with our settings, the
    sigmoid loss, no clipping, fp32 on the CPU, TRL's activation checkpointing and bf16 defaults turned off (with
    activation checkpointing TRL would also generate without a KV cache), prompts in data order."""
    from trl.experimental.online_dpo import OnlineDPOConfig

    return OnlineDPOConfig(
        output_dir=output_dir,
        per_device_train_batch_size=work.batch_size,
        gradient_accumulation_steps=1,
        max_steps=work.total_steps,
        learning_rate=work.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=0.0,  # no clipping (ours: none either)
        optim="adamw_torch",
        beta=BETA,
        loss_type="sigmoid",
        max_new_tokens=work.max_new_tokens,
        max_length=1024,  # prompt + completion: never reached, so TRL truncates nothing
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        min_p=None,
        repetition_penalty=1.0,
        missing_eos_penalty=None,
        use_vllm=False,
        gradient_checkpointing=False,
        bf16=False,
        fp16=False,
        use_cpu=True,
        disable_dropout=True,
        train_sampling_strategy="sequential",
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )


def _trl(queue, work: Workload) -> None:
    """Train TRL's OnlineDPOTrainer; per-step seconds, generated tokens, ties, losses."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl.experimental.online_dpo import OnlineDPOTrainer
    from trl_comparison import _max_rss_mib

    from dpo_lightning.eval.rewards import sentiment_reward
    from dpo_lightning.models.loading import build_model, load_tokenizer, model_config

    threads = _threads(work)
    config = model_config("tiny")
    tokenizer = load_tokenizer(config)
    model = build_model(config)
    initial = weights_digest(model)
    batch_size = work.batch_size
    current: dict[str, Any] = {}  # this step's generation and rewards
    steps: list[dict[str, Any]] = []
    sampled_prompts: list[list[int]] = []

    def vader_reward(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
        """VADER of prompt + completion (`sentiment_reward`); TRL passes [2B] prompts and completions, the first
        sample of every prompt, then the second."""
        scores = [sentiment_reward(p, c) for p, c in zip(prompts, completions, strict=True)]
        current["scores"] = scores
        return scores

    class Recorded(OnlineDPOTrainer):
        def _generate(self, model, prompts, images=None):
            started = time.perf_counter()
            output = super()._generate(model, prompts, images)
            prompt_ids, prompt_mask, _, completion_mask, _ = output
            current["generation_s"] = time.perf_counter() - started
            current["generated_tokens"] = int(completion_mask.sum())
            sampled_prompts.extend(
                row[mask.bool()].tolist()
                for row, mask in zip(prompt_ids[:batch_size], prompt_mask[:batch_size], strict=True)
            )
            return output

        def training_step(self, *args, **kwargs):
            loss = super().training_step(*args, **kwargs)
            current["loss"] = float(loss)
            return loss

    class StepTimer(TrainerCallback):
        """Seconds from step begin to step end (generation, rewards, forwards, backward, optimizer step)."""

        def on_step_begin(self, args, state, control, **kwargs):
            current.clear()
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            seconds = time.perf_counter() - self.start
            scores = current["scores"]
            ties = sum(a == b for a, b in zip(scores[:batch_size], scores[batch_size:], strict=True))
            steps.append(
                {
                    "seconds": seconds,
                    "pairs": batch_size,  # TRL trains one pair a prompt, ties included
                    "informative_pairs": batch_size - ties,
                    "prompts": batch_size,
                    "tied_prompts": ties,
                    "generated_tokens": current["generated_tokens"],
                    "generation_s": current["generation_s"],
                    "loss": current["loss"],
                    "score": _mean_score(scores),
                }
            )

    trainer = Recorded(
        model=model,
        ref_model=None,  # TRL makes a frozen copy of the initial model
        reward_funcs=[vader_reward],
        args=trl_config(tempfile.mkdtemp(prefix="online-dpo-trl-"), work),
        train_dataset=Dataset.from_dict({"prompt": work.prompt_texts}),
        processing_class=tokenizer,
        callbacks=[StepTimer()],
    )
    trainer.train()
    queue.put(
        {
            "steps": steps,
            "weights": initial,
            "prompts": ids_digest(sampled_prompts),
            "max_weight_change": max_difference(trainer.model, trainer.ref_model),
            "threads": threads,
            "peak_mib": _max_rss_mib(),
            "generation_config": {
                key: getattr(trainer.generation_config, key, None)
                for key in ("do_sample", "temperature", "top_k", "top_p", "repetition_penalty", "use_cache")
            },
            "dtype": str(next(trainer.model.parameters()).dtype),
        }
    )


# ---------------------------------------------------------------------------------------------- sampling alone


SAMPLING_VARIANTS = {  # key → (label, sample_completions options)
    "shared": ("(a) KV cache + shared prompt prefill (default)", {}),
    "cache": ("(b) KV cache, each row prefills its prompt (`share_prompt=False`)", {"share_prompt": False}),
    "none": ("(c) no KV cache (`use_cache=False`)", {"use_cache": False}),
}


def _sampling(queue, work: Workload) -> None:
    """`sample_completions` of the tiny model, K = SAMPLING_K, in each variant: one warm-up call each, then
    `sampling_repeats` rounds in turns; the seconds of every call and the samples drawn."""
    from dpo_lightning.eval.sampling import SamplingSettings, sample_completions
    from dpo_lightning.models.loading import build_model, load_tokenizer, model_config

    threads = _threads(work)
    config = model_config("tiny")
    tokenizer, model = load_tokenizer(config), build_model(config)
    prompts = work.prompt_ids[: work.batch_size]
    settings = SamplingSettings(max_new_tokens=work.max_new_tokens, batch_size=work.batch_size, seed=0)

    def call(options: dict[str, Any]) -> tuple[float, list[list[int]]]:
        started = time.perf_counter()
        samples = sample_completions(model, prompts, tokenizer, settings, num_samples=SAMPLING_K, **options)
        return time.perf_counter() - started, samples

    drawn = {key: call(options)[1] for key, (_, options) in SAMPLING_VARIANTS.items()}  # warm-up
    seconds: dict[str, list[float]] = {key: [] for key in SAMPLING_VARIANTS}
    for _ in range(work.sampling_repeats):
        for key, (_, options) in SAMPLING_VARIANTS.items():
            seconds[key].append(call(options)[0])
    queue.put(
        {
            key: {
                "seconds": seconds[key],
                "tokens": sum(map(len, drawn[key])),
                "same_samples_as_shared": drawn[key] == drawn["shared"],
            }
            for key in SAMPLING_VARIANTS
        }
        | {"threads": threads, "prompts": len(prompts)}
    )


# ---------------------------------------------------------------------------------------------- report


def summarise(result: dict[str, Any], warmup: int) -> dict[str, Any]:
    """Rates over the measured steps (warm-up excluded) and the sanity values over all steps."""
    measured = result["steps"][warmup:]
    seconds = sum(s["seconds"] for s in measured)
    generation_s = sum(s["generation_s"] for s in measured)
    tokens = sum(s["generated_tokens"] for s in measured)
    last = result["steps"][-LAST_STEPS:]
    return {
        "steps_s": len(measured) / seconds,
        "step_s": seconds / len(measured),
        "pairs_s": sum(s["pairs"] for s in measured) / seconds,
        "pairs_step": sum(s["pairs"] for s in measured) / len(measured),
        "informative_pairs_s": sum(s["informative_pairs"] for s in measured) / seconds,
        "tied_prompts": sum(s["tied_prompts"] for s in measured),
        "prompts": sum(s["prompts"] for s in measured),
        "generated_tokens_s": tokens / seconds,
        "generation_tokens_s": tokens / generation_s if generation_s else math.nan,
        "generation_share": generation_s / seconds,
        "loss_first": result["steps"][0]["loss"],
        "loss_last": result["steps"][-1]["loss"],
        "losses": [s["loss"] for s in result["steps"]],
        "score_last": _mean_score([s["score"] for s in last]),
        "score_first": result["steps"][0]["score"],
        "max_weight_change": result["max_weight_change"],
        "peak_mib": result["peak_mib"],
        "threads": result["threads"],
    }


def environment(argv: list[str]) -> dict[str, Any]:
    """Date, machine, library versions and the command line of this run."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as file:
            cpu = next((line.split(":", 1)[1].strip() for line in file if line.startswith("model name")), cpu)
    except OSError:
        pass
    versions = {}
    for package in ("torch", "transformers", "trl", "lightning", "accelerate"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{cpu}, {os.cpu_count()} logical cores, {platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "versions": versions,
        "command": "python " + shlex.join(argv),
    }


def _ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def build_report(
    ours: dict, trl: dict, sampling: dict, raw: dict[str, dict], work: Workload, env: dict, checks: dict
) -> dict:
    """Everything the table shows, as JSON-ready values."""
    ratios = {key: _ratio(ours[key], trl[key]) for key in ("pairs_s", "steps_s", "informative_pairs_s")}
    ratios["generated_tokens_s"] = _ratio(ours["generated_tokens_s"], trl["generated_tokens_s"])
    none_rate = sampling["none"]["tokens"] / statistics.median(sampling["none"]["seconds"])
    variants = {}
    for key, (label, _) in SAMPLING_VARIANTS.items():
        median = statistics.median(sampling[key]["seconds"])
        rate = sampling[key]["tokens"] / median
        variants[key] = {"label": label, **sampling[key], "median_s": median, "tokens_s": rate}
        variants[key]["ratio_to_no_cache"] = rate / none_rate
    settings = {k: v for k, v in asdict(work).items() if k not in ("prompt_texts", "prompt_ids")}
    return {
        **env,
        "settings": settings | {"beta": BETA, "samples_per_prompt": SAMPLES_PER_PROMPT, "layout": LAYOUT},
        "ours": ours,
        "trl": trl,
        "ratios": ratios,
        "target": {"pairs_s_ratio": TARGET_PAIRS, "met": ratios["pairs_s"] >= TARGET_PAIRS},
        "sampling": {"samples_per_prompt": SAMPLING_K, "prompts": sampling["prompts"], "variants": variants},
        "checks": checks,
        "trl_generation_config": raw["trl"].get("generation_config"),
    }


def print_report(report: dict) -> None:
    """The markdown tables (stdout)."""
    s, ours, trl, ratios = report["settings"], report["ours"], report["trl"], report["ratios"]
    v = report["versions"]
    print(f"**Online DPO, ours vs TRL `OnlineDPOTrainer`** — {report['date']}")
    print()
    print(
        f"Machine: {report['machine']}; torch threads: ours {ours['threads']}, TRL {trl['threads']}, "
        f"sampling {report['sampling_threads']}. Python {report['python']}, torch {v['torch']}, transformers "
        f"{v['transformers']}, trl {v['trl']}, lightning {v['lightning']}, accelerate {v['accelerate']}."
    )
    print(f"Command: `{report['command']}`")
    print(
        f"Workload: tiny Llama (fp32, CPU), `task=sentiment` prompts, {s['batch_size']} prompts/step, "
        f"K = {s['samples_per_prompt']} samples a prompt, max_new_tokens {s['max_new_tokens']}, temperature 1, "
        f"β = {BETA}, AdamW lr {s['lr']:g}, {s['warmup']} warm-up + {s['steps']} measured steps."
    )
    print()
    header = (
        "| system | steps/s | s/step | pairs/s (trained) | pairs/step | informative pairs/s | generated tokens/s "
        "(step) | generated tokens/s (generation only) | generation share of step | tied prompts | loss first → last "
        f"| mean reward, last {LAST_STEPS} steps (first step) | max abs(θ − θ_ref) |"
    )
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for label, row in (("ours: `OnlineDPOModule` + Lightning", ours), ("TRL `OnlineDPOTrainer`", trl)):
        print(
            f"| {label} | {row['steps_s']:.2f} | {row['step_s']:.2f} | {row['pairs_s']:.2f} | {row['pairs_step']:.1f} "
            f"| {row['informative_pairs_s']:.2f} | {row['generated_tokens_s']:.0f} | {row['generation_tokens_s']:.0f} "
            f"| {row['generation_share']:.0%} | {row['tied_prompts']}/{row['prompts']} "
            f"| {row['loss_first']:.4f} → {row['loss_last']:.4f} "
            f"| {row['score_last']:+.3f} ({row['score_first']:+.3f}) "
            f"| {row['max_weight_change']:.2e} |"
        )
    print(
        f"| **ours ÷ TRL** | **{ratios['steps_s']:.2f}×** | | **{ratios['pairs_s']:.2f}×** | "
        f"| {ratios['informative_pairs_s']:.2f}× | {ratios['generated_tokens_s']:.2f}× | | | | | |"
    )
    print()
    met = "**met**" if report["target"]["met"] else "**missed**"
    print(
        f"Target: ours ≥ {TARGET_PAIRS:g}× TRL's pairs/s — {met} ({ratios['pairs_s']:.2f}×; "
        f"{ratios['informative_pairs_s']:.2f}× counting only pairs whose samples scored differently)."
    )
    print()
    sampling = report["sampling"]
    print(
        f"**Sampling alone**: `sample_completions`, {sampling['prompts']} prompts × "
        f"K = {sampling['samples_per_prompt']}, max_new_tokens {s['max_new_tokens']}, one warm-up call each, "
        f"median of {s['sampling_repeats']} rounds."
    )
    print()
    header = "| sampling | tokens a call | median s | tokens/s | ÷ no KV cache | same samples as (a) |"
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for row in sampling["variants"].values():
        print(
            f"| {row['label']} | {row['tokens']} | {row['median_s']:.3f} | {row['tokens_s']:.0f} "
            f"| {row['ratio_to_no_cache']:.2f}× | {'yes' if row['same_samples_as_shared'] else 'no'} |"
        )
    print()
    checks = report["checks"]
    print(
        f"Checks: initial weights {checks['weights']}; prompt ids sampled from {checks['prompts']}; "
        f"prompts cut by ours' tokenization: {checks['prompts_cut']}; TRL generation config: "
        + ", ".join(f"{k}={v}" for k, v in (report["trl_generation_config"] or {}).items())
        + "."
    )


# ---------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=50, help="measured optimizer steps per system")
    parser.add_argument("--warmup", type=int, default=2, help="optimizer steps before them, timed but excluded")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per optimizer step, for both systems")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="longest sample, for both systems")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (the tiny model's default)")
    parser.add_argument("--sampling-repeats", type=int, default=7, help="timed rounds of the sampling comparison")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per process (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="smoke check: 1 warm-up + 2 steps, 2 sampling rounds")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.warmup, args.sampling_repeats = 2, 1, 2
    if min(args.steps, args.warmup, args.batch_size, args.max_new_tokens, args.sampling_repeats) < 1:
        parser.error("--steps, --warmup, --batch-size, --max-new-tokens and --sampling-repeats must be ≥ 1")
    return args


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    os.environ.update(  # inherited by every child: nothing from the network, no progress bars
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        TQDM_DISABLE="1",
        TRL_EXPERIMENTAL_SILENCE="1",  # `trl.experimental` warns on import
        **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}),
    )
    from reference_strategies import _in_child
    from trl_comparison import _guarded

    env = environment(sys.argv)
    count = args.batch_size * (args.warmup + args.steps)
    texts = sentiment_prompts(count)
    if len(texts) < count:
        sys.exit(f"the sentiment task gave {len(texts)} distinct prompts, {count} needed")
    ids, cut = tokenize_prompts(texts, args.max_new_tokens)
    work = Workload(
        texts, ids, args.batch_size, args.warmup, args.steps, args.lr, args.max_new_tokens, args.threads,
        args.sampling_repeats,
    )  # fmt: skip
    context = multiprocessing.get_context("spawn")
    raw: dict[str, dict] = {}
    for key, target in (("ours", _ours), ("trl", _trl), ("sampling", _sampling)):
        print(f"running {key} …", file=sys.stderr, flush=True)
        raw[key] = _in_child(context, _guarded, target, work)
        if "error" in raw[key]:
            sys.exit(f"{key} failed: {raw[key]['error']}")
        print(f"  {key} done at {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)

    expected = ids_digest(ids)
    checks = {
        "weights": "identical" if raw["ours"]["weights"] == raw["trl"]["weights"] else "**DIFFERENT**",
        "prompts": (
            "identical"
            if raw["ours"]["prompts"] == raw["trl"]["prompts"] == expected
            else f"**DIFFERENT** (ours {raw['ours']['prompts']}, TRL {raw['trl']['prompts']}, expected {expected})"
        ),
        "prompts_cut": cut,
        "weights_digest": raw["ours"]["weights"],
        "prompts_digest": expected,
    }
    ours, trl = summarise(raw["ours"], args.warmup), summarise(raw["trl"], args.warmup)
    report = build_report(ours, trl, raw["sampling"], raw, work, env, checks)
    report["sampling_threads"] = raw["sampling"]["threads"]
    report["total_s"] = time.perf_counter() - started
    print_report(report)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"wrote {args.out}", file=sys.stderr)
    print(f"total {report['total_s']:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
