"""Training throughput, peak memory and utilisation against Hugging Face TRL's `DPOTrainer`, on one workload.

    pip install -e ".[bench]"        # TRL: a benchmark-only extra, never a runtime dependency
    python benchmarks/trl_comparison.py [--steps 5] [--warmup 2] [--batch-size 8] [--pairs N] [--lr 1e-3]
                                        [--packing-max-tokens N] [--repeat 1] [--threads N] [--only CONFIG …]

One run builds, in a temporary folder, everything both systems read, so they see identical inputs:
- a tokenizer: byte-level BPE (8,192 tokens) trained with `tokenizers` on seeded synthetic text, wrapped as a
  `PreTrainedTokenizerFast` with <|bos|> 0, <|eos|> 1, <|pad|> 2 (it adds no special token by itself);
- a model: a random-init Llama (4 layers, width 256, MLP 688, 4 heads, vocabulary 8,192, untied head) built from
  a config with a fixed seed and saved once; both systems load these weights from the folder;
- data: `--pairs` HH-like pairs, prompt "\\n\\nHuman: … \\n\\nAssistant:" of 60–140 words, responses of 20–60
  words, words drawn (seeded, Zipf) from a fixed synthetic vocabulary (≈1.3 tokens a word), as a JSONL of
  prompt/chosen/rejected.

Each configuration trains in a fresh process (`reference_strategies._in_child`) on the first
`batch-size × (warmup + steps)` pairs in file order (no shuffling), `batch-size` pairs per optimizer step, fp32 on
the CPU, DPO sigmoid loss, β = 0.1, dropout off, AdamW (weight decay 0, constant learning rate, no gradient
clipping, no activation checkpointing) on both sides. The first `--warmup` steps are timed but excluded.

- TRL: `DPOTrainer` with a live reference (`ref_model=None`: TRL loads a second copy of the model) or with
  `precompute_ref_log_probs=True` (its precompute pass, inside the trainer's constructor, timed separately);
  `gradient_checkpointing=False` and `bf16=False` (TRL's DPOConfig defaults turn both on), `padding_free=False`,
  `train_sampling_strategy="sequential"`. A step is timed from `on_step_begin` to `on_step_end` (after the batch is
  loaded; forward, backward, optimizer step).
- ours: the real `DPOLitModule` under a Lightning Trainer, through `train_throughput.measure` (imported; its
  model, pairs, collate function, module and callback swapped for this workload, as `reference_strategies.py`
  does). A configuration is a dict of options — batch layout, log-prob computation, reference strategy, compile —
  and `CONFIGS` lists them cumulatively (plain → + prefix sharing → + packing →
  + lean log-probs → + precomputed reference), then `+ torch.compile` and prefix sharing without packing;
  `--only … padded-lean padded-lean-precomputed` adds padded rows with lean log-probs. `collate_for` and
  `model_options` turn the options into this checkout's collate function and model-config keys (`data.layout`
  values through `collate.collate_function`, `--packing-max-tokens` for "packed", default the batch's longest
  pair as in the product; `model.lean_logprobs`, which selects the policy's path — a live reference always takes
  the lean one; `model.compile`); an option the checkout lacks shows as n/a. `precomputed` computes its cache
  with `reference.compute_table` in a process of its own (`reference_strategies._precompute`, timed, model
  loading included), so its training peak holds no reference.

Tokenization. TRL appends the EOS *text* to each response, tokenizes `prompt` and `prompt + response` (with
`add_special_tokens=True`) and splits at their common prefix; ours (`PairTokenizer`) tokenizes prompt and responses
separately without special tokens and appends the EOS id. They give identical ids here because the tokenizer adds no
BOS/EOS of its own and every response starts with a space after the prompt's final ":", a pre-tokenizer boundary
no BPE merge crosses. The run checks it: TRL's tokenized dataset and our pairs must hash equal (printed).
(With a tokenizer that adds BOS, TRL would start every prompt with it and ours would not.)

What is measured, per configuration:
- pairs/s, tokens/s over the measured steps. tokens = non-padding tokens fed to the policy (`Batch.num_tokens`,
  TRL: `attention_mask.sum()`): the prompt counts once for every row that computes it — twice a pair in the padded
  layout (chosen row and rejected row), once with prefix sharing.
- peak RSS: the process's `ru_maxrss` (MiB), with its baseline after imports, before the model, in parentheses.
  TRL's includes its in-process precompute pass; ours' precompute process is separate.
- loss at step 1 and 2. With the reference equal to the initial policy, every step-1 loss is exactly ln 2 whatever
  the data; the step-2 loss (after one identical AdamW update) is the one that tests same weights, data order,
  tokenization, gradients and optimizer. The step-1 mean log π(chosen) of both systems is printed too.
- utilisation = useful model FLOP/s ÷ measured fp32 matmul FLOP/s, where per step
      useful = 6·N·tokens + 6·V·H·R + 12·L·H·A                      policy forward + backward
             + 2·N·tokens + 2·V·H·R +  4·L·H·A   (live reference)   reference forward
  N = non-embedding parameters (blocks and final norm: no embedding, no LM head), V·H the LM head, R the response
  tokens (where log-probs are needed), L layers, H the width, and A the query–key pairs a pair needs attended
  (QKᵀ and AV, 2·H FLOPs each per layer, as PaLM's MFU counts them), the prompt attended once: for prompt,
  chosen and rejected lengths p, c, r, A = (p+c)(p+c+1)/2 + r·p + r(r+1)/2. The same A for every system and
  layout: LM-head work on prompt or padding positions, a prompt computed twice, attention to padding, and
  recomputation are not useful work. The matmul rate is measured in a fresh process with
  `torch.matmul` on fp32 [T, 256] × [256, 688] (T = mean tokens per padded step: the model's MLP shape) and on
  [2048, 2048] × [2048, 2048], before and after the configurations; the best of each is used. Utilisation is
  reported against both (model-shaped / square); the target is judged on the model-shaped rate.

Every ratio compares like with like: a configuration of ours with a live reference against TRL's live reference,
one with precomputed reference log-probs against TRL's `precompute_ref_log_probs`. Targets, judged per
configuration of ours against TRL with the same kind of reference: pairs/s ≥ 5×; peak RSS ≤ 0.6×; utilisation
≥ 75%; step-1 loss within 1e-4. The peak RSS here is of the process that trains the steps, not of a whole run: ours
leaves out data loading (pairs come pre-tokenized) and, precomputed, the precompute pass (its own process), while
TRL's includes its dataset map and its in-process precompute pass. `whole_process.py` measures both systems as
whole runs; judge memory there. With the defaults it runs in about 3 minutes on 2 idle CPU cores.

Other load on the machine slows a multi-threaded CPU run far more than its share (threads wait for each other), and
not evenly across configurations: compare rows of one run on an idle machine, or use `--repeat 2` (interleaved
rounds, each configuration keeps its fastest) and/or `--threads 1`.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import math
import multiprocessing
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

# Only the standard library at module level: each configuration's process imports its own system only (a spawned
# child re-imports this module), so its post-import RSS baseline is that system's.

HIDDEN, MLP, LAYERS, HEADS, VOCAB = 256, 688, 4, 4, 8192
BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"  # ids 0, 1, 2 (train_throughput.measure pads with 2)
PROMPT_WORDS, RESPONSE_WORDS = (60, 140), (20, 60)
BETA = 0.1


CONFIGS = {  # key → (label, options): TRL, then ours in cumulative order, then other combinations
    "trl-live": ("TRL `DPOTrainer`, live reference", {"system": "trl", "reference": "model"}),
    "trl-precomputed": ("TRL `DPOTrainer`, precompute_ref_log_probs", {"system": "trl", "reference": "precomputed"}),
    "plain": ("plain (padded, full log-probs)", {"layout": "padded", "logprobs": "full", "reference": "model"}),
    "prefix": ("+ prefix sharing", {"layout": "prefix_shared", "logprobs": "full", "reference": "model"}),
    "packing": ("+ packing", {"layout": "packed", "logprobs": "full", "reference": "model"}),
    "lean": ("+ lean log-probs", {"layout": "packed", "logprobs": "lean", "reference": "model"}),
    "precomputed": ("+ precomputed reference", {"layout": "packed", "logprobs": "lean", "reference": "precomputed"}),
    # not run by default (--only …): other combinations
    "padded-lean": ("padded, lean log-probs", {"layout": "padded", "logprobs": "lean", "reference": "model"}),
    "padded-lean-precomputed": (
        "padded, lean, precomputed reference",
        {"layout": "padded", "logprobs": "lean", "reference": "precomputed"},
    ),
    "prefix-lean-precomputed": (
        "prefix sharing, lean, precomputed reference (no packing)",
        {"layout": "prefix_shared", "logprobs": "lean", "reference": "precomputed"},
    ),
    "compiled": (
        "+ torch.compile (`model.compile`)",
        {"layout": "packed", "logprobs": "lean", "reference": "precomputed", "compile": True},
    ),
}
DEFAULT = [
    *("trl-live", "trl-precomputed", "plain", "prefix", "packing", "lean", "precomputed"),
    *("compiled", "prefix-lean-precomputed"),
]
TARGET_SPEEDUP, TARGET_RSS, TARGET_UTILISATION, TARGET_LOSS = 5.0, 0.6, 0.75, 1e-4


# ---------------------------------------------------------------------------------------------- the workload


def _synthetic_words(rng: random.Random, count: int) -> list[str]:
    onsets = [*"bcdfghjklmnprstvwz", "br", "ch", "sh", "st", "tr", "th", "pl", "gr"]
    vowels = ["a", "e", "i", "o", "u", "ai", "ea", "ou"]
    words: dict[str, None] = {}
    while len(words) < count:
        syllables = rng.choice([1, 2, 2, 3, 3, 4])
        word = "".join(rng.choice(onsets) + rng.choice(vowels) for _ in range(syllables))
        words[word + rng.choice(["", "", "n", "s", "t", "r", "l"])] = None
    return list(words)


class _Text:
    """Seeded word sampling from a fixed synthetic vocabulary (Zipf weights, some punctuation)."""

    def __init__(self, seed: int, vocabulary: int = 15_000, exponent: float = 1.05) -> None:
        self.rng = random.Random(seed)
        self.words = _synthetic_words(random.Random(1234), vocabulary)
        self.weights = [1 / (rank + 1) ** exponent for rank in range(vocabulary)]

    def __call__(self, count: int) -> str:
        words = self.rng.choices(self.words, self.weights, k=count)
        return " ".join(w + self.rng.choice(",.?!") if self.rng.random() < 0.08 else w for w in words)


def build_tokenizer(folder: Path):
    """A byte-level BPE of VOCAB tokens trained on seeded synthetic text, saved to `folder`."""
    from transformers import PreTrainedTokenizerFast

    from dpo_lightning.models.tiny_tokenizer import train_byte_level_bpe

    text = _Text(seed=1)
    bpe = train_byte_level_bpe((text(100) for _ in range(5000)), VOCAB)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=BOS, eos_token=EOS, pad_token=PAD)
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (0, 1, 2)
    tokenizer.save_pretrained(folder)
    return tokenizer


def build_model(folder: Path, vocab_size: int) -> dict[str, int]:
    """The seeded random-init Llama, saved to `folder`; returns its sizes for the FLOP count."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=HIDDEN,
        intermediate_size=MLP,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
        attention_dropout=0.0,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    embedding = {id(model.get_input_embeddings().weight), id(model.get_output_embeddings().weight)}
    non_embedding = sum(p.numel() for p in model.parameters() if id(p) not in embedding)
    return {"non_embedding": non_embedding, "head": vocab_size * HIDDEN, "total": model.num_parameters()}


def write_pairs(path: Path, count: int) -> None:
    """`count` HH-like prompt/chosen/rejected rows as JSONL."""
    text, rng = _Text(seed=2), random.Random(3)
    with path.open("w") as file:
        for _ in range(count):
            row = {
                "prompt": f"\n\nHuman: {text(rng.randint(*PROMPT_WORDS))}\n\nAssistant:",
                "chosen": " " + text(rng.randint(*RESPONSE_WORDS)),
                "rejected": " " + text(rng.randint(*RESPONSE_WORDS)),
            }
            file.write(json.dumps(row) + "\n")


def tokenize_pairs(path: Path, tokenizer) -> list:
    """Our tokenization of the JSONL (`PairTokenizer`; no truncation at these lengths)."""
    from dpo_lightning.data.tokenize import PairTokenizer, TokenizeSettings

    rows = [json.loads(line) for line in path.open()]
    pair_tokenizer = PairTokenizer(
        tokenizer, TokenizeSettings(max_length=4096, max_prompt_length=2048, truncation_mode="keep_end")
    )
    prepared = pair_tokenizer([r["prompt"] for r in rows], [r["chosen"] for r in rows], [r["rejected"] for r in rows])
    assert not any(cut.prompt or cut.responses for _, cut in prepared)
    return [pair for pair, _ in prepared]


def token_digest(triples) -> str:
    """A hash of (prompt, chosen, rejected) id lists, in order: equal iff both systems see the same ids."""
    digest = hashlib.sha256()
    for triple in triples:
        digest.update(json.dumps([list(part) for part in triple]).encode())
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- child processes


def _max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _matmul_rates(queue, tokens: int, square: int = 2048) -> None:
    """fp32 torch.matmul FLOP/s: the model's MLP shape [tokens, H] × [H, MLP], and a large square product."""
    import torch

    def rate(m: int, k: int, n: int, windows: int = 5, seconds: float = 0.3) -> float:
        a, b, out = torch.randn(m, k), torch.randn(k, n), torch.empty(m, n)
        for _ in range(2):
            torch.matmul(a, b, out=out)
        best = 0.0
        for _ in range(windows):  # best window: the least disturbed by other load on the machine
            count, start = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - start) < seconds:
                torch.matmul(a, b, out=out)
                count += 1
            best = max(best, 2 * m * k * n * count / elapsed)
        return best

    queue.put(
        {"model": rate(tokens, HIDDEN, MLP), "square": rate(square, square, square), "threads": torch.get_num_threads()}
    )


def trl_config(output_dir: str, batch_size: int, steps: int, lr: float, precompute: bool):
    """TRL's `DPOConfig` for the workload (see the module docstring): the sigmoid loss, no clipping, fp32 on the CPU,
    TRL's activation checkpointing and bf16 defaults turned off, data in file order."""
    import torch
    from trl import DPOConfig

    return DPOConfig(
        output_dir=output_dir,
        per_device_train_batch_size=batch_size,
        max_steps=steps,
        learning_rate=lr,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=0.0,  # no clipping (ours: none either)
        beta=BETA,
        loss_type=["sigmoid"],
        max_length=None,
        precompute_ref_log_probs=precompute,
        padding_free=False,
        gradient_checkpointing=False,
        bf16=False,
        fp16=False,
        use_cpu=True,
        disable_dropout=True,
        model_init_kwargs={"dtype": torch.float32, "attn_implementation": "sdpa"},
        train_sampling_strategy="sequential",
        dataloader_num_workers=0,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )


def _trl(queue, folder: str, data_file: str, precompute: bool, batch_size: int, steps: int, lr: float) -> None:
    """Train TRL's DPOTrainer for `steps` steps; per-step seconds, tokens, losses; peak RSS."""
    # A datasets cache of its own: TRL keeps precomputed reference log-probs there and would reuse an earlier run's.
    cache = Path(os.environ["HF_DATASETS_CACHE"])
    cache.mkdir(parents=True, exist_ok=True)
    os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(dir=cache)

    from datasets import load_dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import DPOTrainer

    baseline_mib = _max_rss_mib()

    class Recorded(DPOTrainer):
        precompute_s = 0.0

        def _precompute_ref_logps(self, *args, **kwargs):
            started = time.perf_counter()
            dataset = super()._precompute_ref_logps(*args, **kwargs)
            type(self).precompute_s += time.perf_counter() - started
            return dataset

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if model.training:
                steps_seen.append(
                    {
                        "loss": float(loss.detach()),
                        "tokens": int(inputs["attention_mask"].sum()),
                        "responses": int(inputs["completion_mask"].sum()),
                        "pairs": inputs["input_ids"].shape[0] // 2,
                        "logps_chosen": self._metrics["train"]["logps/chosen"][-1],
                    }
                )
            return loss

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            seconds.append(time.perf_counter() - self.start)

    steps_seen: list[dict] = []
    seconds: list[float] = []
    args = trl_config(tempfile.mkdtemp(prefix="trl-"), batch_size, steps, lr, precompute)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    dataset = load_dataset("json", data_files=data_file, split="train")
    trainer = Recorded(model=folder, ref_model=None, args=args, train_dataset=dataset, processing_class=tokenizer)
    trainer.add_callback(StepTimer())
    trained = trainer.train_dataset.select(range(batch_size * steps))
    digest = token_digest(zip(trained["prompt_ids"], trained["chosen_ids"], trained["rejected_ids"], strict=True))
    trainer.train()
    queue.put(
        {
            "steps": [{**step, "seconds": s} for step, s in zip(steps_seen, seconds, strict=True)],
            "peak_mib": _max_rss_mib(),
            "baseline_mib": baseline_mib,
            "precompute_s": Recorded.precompute_s if precompute else None,
            "digest": digest,
            "reference_held": trainer.ref_model is not None,
            "activation_checkpointing": bool(trainer.args.activation_checkpointing),
        }
    )


def _swap_workload(module, model_config: dict, pairs: list, collate) -> None:
    """Point `train_throughput` / `reference_strategies` helpers at this workload (they read module globals;
    both collate with `collate_padded(pairs, 2)`, which becomes the configuration's layout)."""
    module._model_config = lambda width: model_config
    module._pairs = lambda count: pairs[:count]
    module.collate_padded = lambda batch_pairs, pad_token_id: collate(batch_pairs)


def _ours(queue, options: dict, model_config: dict, pairs: list, batch_size: int, steps: int, lr: float) -> None:
    """Train DPOLitModule through `train_throughput.measure` with this configuration's options."""
    import train_throughput

    from dpo_lightning.training.module import DPOLitModule
    from dpo_lightning.training.throughput import Throughput

    _swap_workload(train_throughput, model_config, pairs, collate_for(options))
    extra = {"optimizer": {"_target_": "torch.optim.AdamW", "lr": lr, "weight_decay": 0.0, "warmup_steps": 0}}
    extra["reference"] = options["reference_config"]
    train_throughput.DPOLitModule = lambda **kwargs: DPOLitModule(**{**kwargs, **extra})

    recorded: list[dict] = []
    instances: list[Throughput] = []

    class Recorder(Throughput):
        """Throughput's per-step timing (pairs, tokens, seconds), plus each step's loss and response tokens."""

        def __init__(self) -> None:
            super().__init__()
            instances.append(self)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)  # times the step first
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            logps = trainer.callback_metrics.get("train/logps/chosen")
            recorded.append(
                {
                    "loss": float(loss),
                    "responses": int(batch.target_ids.numel()),
                    "logps_chosen": math.nan if logps is None else float(logps),
                }
            )

    train_throughput.Throughput = Recorder
    result = train_throughput.measure("trl-comparison", "dpo", batch_size, steps, "cpu")
    (timing,) = instances
    result["steps"] = [
        {"pairs": p, "tokens": t, "seconds": s, **r} for (p, _, t, s), r in zip(timing.steps, recorded, strict=True)
    ]
    queue.put(result)


def _ours_precompute(queue, options: dict, model_config: dict, pairs: list, batch_size: int, path: str) -> None:
    """`reference_strategies._precompute` (build the model, `compute_table` over every pair) on this workload."""
    import reference_strategies

    _swap_workload(reference_strategies, model_config, pairs, collate_for(options))
    reference_strategies._pairs = lambda count: pairs  # every pair, as TRL precomputes its whole dataset
    reference_strategies._precompute(queue, "trl-comparison", batch_size, 1, "cpu", path)


# ---------------------------------------------------------------------------------------------- options


# How a configuration's options reach this checkout: the only place that knows the option names. Each returns
# None where the checkout does not have the option yet (the row prints n/a).


def collate_for(options: dict):
    """The collate function (pairs → Batch) of `options["layout"]`: `collate.collate_function` where it exists
    ("prefix_shared": a row per pair, the prompt once; "packed": prefix-shared pairs packed into rows of at most
    `packing_max_tokens` tokens), else only "padded"."""
    from functools import partial

    from dpo_lightning.data import collate

    layout = options["layout"]
    if layout in getattr(collate, "LAYOUTS", ()) and hasattr(collate, "collate_function"):
        return collate.collate_function(layout, 2, options.get("packing_max_tokens"))
    return partial(collate.collate_padded, pad_token_id=2) if layout == "padded" else None


def model_options(options: dict) -> dict | None:
    """Model-config keys of a configuration: the policy's log-prob computation, "lean" (LM head on response
    positions only, chunked fp32 log-softmax) or "full" (head at every position, one [R, T, V] fp32 log-softmax,
    as TRL and the reference implementation), and `compile` (torch.compile of the policy's blocks). Before the
    lean switch existed, only the lean computation did; before `model.compile`, nothing compiled."""
    from dpo_lightning.models import loading as models
    from dpo_lightning.models import logprobs

    keys = {"compile": True} if options.get("compile") else {}
    if keys and not hasattr(models, "compile_blocks"):
        return None
    if "lean" in inspect.signature(logprobs.token_logprobs).parameters:
        return keys | {"lean_logprobs": options["logprobs"] == "lean"}
    return keys if options["logprobs"] == "lean" else None


def unavailable(options: dict) -> str | None:
    """Why this checkout cannot run a configuration of ours (None: it can)."""
    if options.get("system") == "trl":
        return None
    if collate_for(options) is None:
        return f"layout {options['layout']!r}: no such layout in `dpo_lightning.data.collate` yet"
    if model_options(options) is None:
        return f"log-probs {options['logprobs']!r} or compile: no such switch in this checkout yet"
    return None


def _guarded(queue, target, *args) -> None:
    """Run a child's `target`; if it fails, report the error instead of leaving the parent waiting. The child's
    chatter (TRL prints its logs, Lightning its banners) goes to stderr, leaving stdout to the table."""
    import logging
    import warnings

    sys.stdout = sys.stderr
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers 5 renames TRL's config keys
    try:
        target(queue, *args)
    except BaseException as error:
        queue.put({"error": f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"})
        raise


# ---------------------------------------------------------------------------------------------- report


def attended_pairs(pair) -> int:
    """A, the query–key pairs one pair needs attended: prompt and chosen causally, rejected after the prompt."""
    p, c, r = len(pair.prompt_ids), len(pair.chosen_ids), len(pair.rejected_ids)
    return (p + c) * (p + c + 1) // 2 + r * p + r * (r + 1) // 2


def summarise(result: dict, warmup: int, sizes: dict, live_reference: bool) -> dict:
    """Rates over the measured steps and useful FLOP/s (see the module docstring)."""
    measured = result["steps"][warmup:]
    seconds = sum(s["seconds"] for s in measured)
    tokens = sum(s["tokens"] for s in measured)
    responses = sum(s["responses"] for s in measured)
    attended = sum(sizes["attended_per_step"][warmup : len(result["steps"])])
    n, head, attention = sizes["non_embedding"], sizes["head"], 4 * LAYERS * HIDDEN * attended
    forward = 2 * n * tokens + 2 * head * responses + attention
    flops = 3 * forward + (forward if live_reference else 0)
    losses = [s["loss"] for s in result["steps"]]
    return {
        "pairs_s": sum(s["pairs"] for s in measured) / seconds,
        "tokens_s": tokens / seconds,
        "flops_s": flops / seconds,
        "step_s": seconds / len(measured),
        "loss1": losses[0],
        "loss2": losses[1] if len(losses) > 1 else math.nan,
        "logps1": result["steps"][0]["logps_chosen"],
        "peak": result["peak_mib"],
        "baseline": result["baseline_mib"],
        "precompute_s": result.get("precompute_s"),
    }


def targets(row: dict | None, same: dict | None, rates: dict) -> list:
    """The targets for one configuration of ours against TRL with the same kind of reference (`same`): True (met),
    False (missed), None (not measured)."""

    def check(condition, *needed) -> bool | None:
        return None if row is None or any(x is None for x in needed) else condition()

    return [
        check(lambda: row["pairs_s"] >= TARGET_SPEEDUP * same["pairs_s"], same),
        check(lambda: row["peak"] <= TARGET_RSS * same["peak"], same),
        check(lambda: row["flops_s"] / rates["model"] >= TARGET_UTILISATION),
        check(lambda: abs(row["loss1"] - same["loss1"]) <= TARGET_LOSS, same),
        check(lambda: abs(row["loss2"] - same["loss2"]) <= TARGET_LOSS, same),
    ]


def _mark(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "**missed**")


def print_report(rows: dict, reasons: dict, rates: dict, args, notes: list[str]) -> None:
    live, pre = rows.get("trl-live"), rows.get("trl-precomputed")

    def same_reference(options: dict) -> dict | None:
        """TRL's row with the same kind of reference: ratios compare live with live, precomputed with precomputed."""
        return pre if options["reference"] == "precomputed" else live

    def ratio(a: float, b: dict | None, key: str) -> str:
        return "n/a" if b is None else f"{a / b[key]:.2f}×"

    header = (
        "| system | configuration | pairs/s | tokens/s | s/step | peak RSS MiB (post-import) "
        "| loss step 1 | loss step 2 | utilisation (model-shaped / square) | pairs/s ÷ TRL (same reference) "
        "| RSS ÷ TRL (same reference) | precompute s |"
    )
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for key in args.only:
        label, options = CONFIGS[key]
        system = "TRL" if options.get("system") == "trl" else "ours"
        row, same = rows.get(key), same_reference(options)
        if row is None:
            print(f"| {system} | {label} " + "| n/a " * 10 + "|")
            continue
        precompute = "" if row["precompute_s"] is None else f"{row['precompute_s']:.1f}"
        print(
            f"| {system} | {label} | {row['pairs_s']:.2f} | {row['tokens_s']:.0f} | {row['step_s']:.2f} "
            f"| {row['peak']:.0f} ({row['baseline']:.0f}) | {row['loss1']:.6f} | {row['loss2']:.6f} "
            f"| {row['flops_s'] / rates['model']:.0%} / {row['flops_s'] / rates['square']:.0%} "
            f"| {ratio(row['pairs_s'], same, 'pairs_s')} | {ratio(row['peak'], same, 'peak')} | {precompute} |"
        )

    print()
    header = (
        f"| configuration (ours) | pairs/s ≥ {TARGET_SPEEDUP:g}× TRL (same reference) "
        f"| in-process RSS ≤ {TARGET_RSS:g}× TRL (same reference) | utilisation ≥ {TARGET_UTILISATION:.0%} "
        f"| step-1 loss within {TARGET_LOSS:g} of TRL | (step-2 loss within {TARGET_LOSS:g}) |"
    )
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for key in args.only:
        label, options = CONFIGS[key]
        if options.get("system") == "trl":
            continue
        marks = targets(rows.get(key), same_reference(options), rates)
        print(f"| {label} | " + " | ".join(_mark(ok) for ok in marks) + " |")

    print()
    print(
        f"fp32 matmul rate: {rates['model'] / 1e9:.1f} GFLOP/s on [{rates['tokens']}, {HIDDEN}] × [{HIDDEN}, {MLP}], "
        f"{rates['square'] / 1e9:.1f} GFLOP/s on 2048³ (best of before/after: "
        + ", ".join(f"{r['model'] / 1e9:.1f}/{r['square'] / 1e9:.1f}" for r in rates["runs"])
        + f"); {rates['threads']} torch threads."
    )
    for key, row in rows.items():
        print(f"step-1 mean log π(chosen), {key}: {row['logps1']:.5f}")
    for line in notes:
        print(line)
    for key, reason in reasons.items():
        if reason is not None:
            print(f"n/a `{key}`: {reason}")


def run_configuration(context, key: str, options: dict, work: dict, args) -> dict:
    """One configuration in fresh processes (ours with a precomputed reference: its cache first, in another)."""
    from reference_strategies import _in_child

    steps = args.warmup + args.steps
    folder = work["folder"]
    if options.get("system") == "trl":
        precompute = options["reference"] == "precomputed"
        workload = (str(folder / "model"), str(folder / "pairs.jsonl"), precompute, args.batch_size, steps, args.lr)
        return _in_child(context, _guarded, _trl, *workload)
    config = {**work["model_config"], **model_options(options)}
    from dpo_lightning.models.reference import FrozenCopy, Precomputed

    reference = FrozenCopy() if options["reference"] == "model" else Precomputed()
    precompute_s = None
    if options["reference"] == "precomputed":
        cache = str(folder / f"cache-{key}.safetensors")
        precompute_s = _in_child(
            context, _guarded, _ours_precompute, options, config, work["pairs"], args.batch_size, cache
        )
        if isinstance(precompute_s, dict):  # its error
            return precompute_s
        reference = Precomputed(cache_file=cache)
    options = {**options, "reference_config": reference}
    workload = (options, config, work["pairs"][: work["trained_pairs"]], args.batch_size, steps, args.lr)
    return _in_child(context, _guarded, _ours, *workload) | {"precompute_s": precompute_s}


# ---------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5, help="measured optimizer steps per configuration")
    parser.add_argument("--warmup", type=int, default=2, help="optimizer steps before them, timed but excluded")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per optimizer step, for every system")
    parser.add_argument("--pairs", type=int, default=None, help="pairs in the data set (default: just enough)")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (shows in the step-2 loss)")
    parser.add_argument(
        "--packing-max-tokens", type=int, default=None, help="layout=packed: tokens a row at most (default: longest)"
    )
    parser.add_argument("--repeat", type=int, default=1, help="interleaved rounds; keep each one's fastest run")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per process (default: torch's)")
    parser.add_argument("--only", nargs="+", choices=list(CONFIGS), default=DEFAULT, help="run these only")
    args = parser.parse_args()
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be at least 1 (the first step is always a warm-up)")
    trained_pairs = args.batch_size * (args.warmup + args.steps)
    args.pairs = args.pairs or trained_pairs
    if args.pairs < trained_pairs:
        parser.error(f"--pairs must be at least batch-size × (warmup + steps) = {trained_pairs}")

    import torch
    import train_throughput
    from reference_strategies import _in_child

    started = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="trl-comparison-") as temporary:
        folder = Path(temporary)
        os.environ.update(  # inherited by every child: nothing from the network, caches in the temporary folder
            HF_HUB_OFFLINE="1",
            HF_DATASETS_CACHE=str(folder / "datasets"),
            TOKENIZERS_PARALLELISM="false",
            TQDM_DISABLE="1",
            **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}),  # torch's thread count in children
        )
        model_folder, data_file = folder / "model", folder / "pairs.jsonl"
        tokenizer = build_tokenizer(model_folder)
        sizes = build_model(model_folder, len(tokenizer))
        write_pairs(data_file, args.pairs)
        pairs = tokenize_pairs(data_file, tokenizer)
        sizes["attended_per_step"] = [
            sum(map(attended_pairs, pairs[i : i + args.batch_size])) for i in range(0, trained_pairs, args.batch_size)
        ]
        ours_digest = token_digest((p.prompt_ids, p.chosen_ids, p.rejected_ids) for p in pairs[:trained_pairs])
        words = [len(json.loads(line)["chosen"].split()) for line in data_file.open()]
        tokens_per_word = sum(len(p.chosen_ids) - 1 for p in pairs) / sum(words)
        padded_tokens = [
            sum(2 * len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs[i : i + args.batch_size])
            for i in range(0, trained_pairs, args.batch_size)
        ]
        model_config = {**train_throughput._model_config("small"), "name": "trl-comparison"}
        model_config |= {"name_or_path": str(model_folder), "config": None}
        tokens = round(sum(padded_tokens) / len(padded_tokens))
        print(
            f"torch {torch.__version__}, {args.batch_size} pairs/step, {args.warmup} warm-up + {args.steps} measured "
            f"steps, {args.pairs} pairs ({tokens_per_word:.2f} tokens a word, {tokens} tokens a padded step); "
            f"model {sizes['total'] / 1e6:.2f}M parameters, {sizes['non_embedding'] / 1e6:.2f}M non-embedding; "
            f"workload built in {time.perf_counter() - started:.0f} s",
            file=sys.stderr,
        )

        runs = [_in_child(context, _matmul_rates, tokens)]
        rows, reasons, notes = {}, {}, {}
        work = {"folder": folder, "model_config": model_config, "pairs": pairs, "trained_pairs": trained_pairs}
        for round_ in range(args.repeat):  # interleaved rounds; each configuration keeps its fastest run
            for key in args.only:
                options = {**CONFIGS[key][1], "packing_max_tokens": args.packing_max_tokens}
                reasons[key] = unavailable(options)
                if reasons[key] is not None:
                    continue
                print(f"running {key} (round {round_ + 1}/{args.repeat}) …", file=sys.stderr, flush=True)
                result = run_configuration(context, key, options, work, args)
                if "digest" in result:
                    same = "identical" if result["digest"] == ours_digest else "**DIFFERENT**"
                    notes[key] = (
                        f"TRL `{key}`: token ids vs ours {same} (digests {result['digest']} / {ours_digest}); "
                        f"reference model held in training: {'yes' if result['reference_held'] else 'no'}; "
                        f"activation checkpointing: {'on' if result['activation_checkpointing'] else 'off'}"
                    )
                if "error" in result:
                    reasons[key] = f"failed: {result['error']}"
                    print(f"  {key}: {reasons[key]}", file=sys.stderr, flush=True)
                    rows.pop(key, None)
                    continue
                row = summarise(result, args.warmup, sizes, live_reference=options["reference"] == "model")
                print(f"  {key}: {row['pairs_s']:.2f} pairs/s", file=sys.stderr, flush=True)
                if key not in rows or row["pairs_s"] > rows[key]["pairs_s"]:
                    rows[key] = row
        runs.append(_in_child(context, _matmul_rates, tokens))

    rates = {
        "model": max(r["model"] for r in runs),
        "square": max(r["square"] for r in runs),
        "tokens": tokens,
        "threads": runs[0]["threads"],
        "runs": runs,
    }
    print_report(rows, reasons, rates, args, list(notes.values()))
    print(f"total {time.perf_counter() - started:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
