"""Batch layouts and the log-prob path side by side: pairs/s of DPO training steps, one CPU process.

    cd benchmarks && python layouts.py [--steps 6] [--pairs 32] [--widths tiny small] [--threads 1]

Workload: random-init Llama of `train_throughput.py`'s widths (vocabulary 2048), pairs of varied lengths as in
real preference data (prompt 16–128, chosen and rejected 8–96 tokens each, uniform), P pairs a step. Each
configuration is its own `DPOLitModule` (policy + frozen reference, AdamW) stepping through the same pairs:
`training_step` (policy forward with grad, reference forward without), backward, optimizer step. The
configurations take turns step by step, so that load from other processes on a shared machine falls on all of
them alike; the first step of each is warm-up and not timed. On a machine shared with other jobs, `--threads 1`
avoids the slow-down of more busy-waiting compute threads than free cores. "grouped" orders the pairs with
`LengthGroupedSampler` (groups of P) before batching, as `data.group_by_length=true` does.

Columns: pairs/s; speed-up over `padded` of the same model; token cells per step R × T (padding included) and
tokens fed (padding excluded; the padded layout feeds each prompt twice).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import warnings

import torch
from train_throughput import VOCAB, _model_config

from dpo_lightning.data.collate import collate_function
from dpo_lightning.data.sampler import LengthGroupedSampler
from dpo_lightning.data.tokenize import TokenizedPair
from dpo_lightning.training.module import DPOLitModule

CONFIGS = [  # (label, data.layout, data.packing_max_tokens, data.group_by_length, model.lean_logprobs)
    ("padded, full log-softmax", "padded", None, False, False),
    ("padded", "padded", None, False, True),
    ("padded, grouped", "padded", None, True, True),
    ("prefix_shared", "prefix_shared", None, False, True),
    ("prefix_shared, grouped", "prefix_shared", None, True, True),
    ("packed (rows ≤ longest pair)", "packed", None, False, True),
    ("packed (rows ≤ longest pair), grouped", "packed", None, True, True),
    ("packed 512", "packed", 512, False, True),
    ("packed 1024", "packed", 1024, False, True),
]
LENGTHS = {"prompt": (16, 128), "response": (8, 96)}

warnings.filterwarnings("ignore", message=r".*self\.trainer. reference is not registered")  # no Trainer here


def _pairs(count: int) -> list[TokenizedPair]:
    rng = random.Random(0)

    def tokens(low: int, high: int) -> list[int]:
        return [rng.randrange(3, VOCAB) for _ in range(rng.randint(low, high))]

    return [
        TokenizedPair(tokens(*LENGTHS["prompt"]), tokens(*LENGTHS["response"]), tokens(*LENGTHS["response"]))
        for _ in range(count)
    ]


def _batches(pairs: list[TokenizedPair], per_step: int, layout: str, max_tokens: int | None, grouped: bool) -> list:
    collate = collate_function(layout, 2, max_tokens)
    order = list(range(len(pairs)))
    if grouped:
        lengths = [len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs]
        order = list(LengthGroupedSampler(lengths, per_step, seed=0))
    return [collate([pairs[i] for i in order[start : start + per_step]]) for start in range(0, len(order), per_step)]


def _module(width: str, lean: bool) -> DPOLitModule:
    torch.manual_seed(0)
    module = DPOLitModule(
        model={**_model_config(width), "lean_logprobs": lean},
        loss={"_target_": "dpo_lightning.losses.dpo.DPO", "beta": 0.1},
        optimizer={"_target_": "torch.optim.AdamW", "lr": 1e-4, "warmup_steps": 0},
    )
    module.configure_model()
    module.train()
    return module


def measure(width: str, steps: int, per_step: int) -> list[dict]:
    """Round-robin over CONFIGS: `steps` timed steps each after one warm-up step."""
    pairs = _pairs(per_step * (steps + 1))
    runs = []
    for label, layout, max_tokens, grouped, lean in CONFIGS:
        module = _module(width, lean)
        runs.append(
            {
                "label": label,
                "module": module,
                "optimizer": module.configure_optimizers()["optimizer"],
                "batches": _batches(pairs, per_step, layout, max_tokens, grouped),
                "seconds": 0.0,
            }
        )
    for step in range(steps + 1):
        for run in runs:
            batch, module, optimizer = run["batches"][step], run["module"], run["optimizer"]
            started = time.perf_counter()
            module.training_step(batch, step).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if step > 0:
                run["seconds"] += time.perf_counter() - started
    for run in runs:
        timed = run["batches"][1:]
        run["pairs_per_s"] = sum(b.num_pairs for b in timed) / run["seconds"]
        run["cells"] = sum(b.input_ids.numel() for b in timed) / steps
        run["tokens"] = sum(b.num_tokens for b in timed) / steps
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per configuration (after one warm-up)")
    parser.add_argument("--pairs", type=int, default=32, help="pairs per step")
    parser.add_argument("--widths", nargs="+", default=["tiny", "small"], help="model widths (train_throughput.py)")
    parser.add_argument("--threads", type=int, default=None, help="torch compute threads (default: torch's)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU", file=sys.stderr)
    print("| model | configuration | pairs/s | vs padded | cells/step | tokens/step |")
    print("|---|---|---|---|---|---|")
    for width in args.widths:
        runs = measure(width, args.steps, args.pairs)
        baseline = next(run["pairs_per_s"] for run in runs if run["label"] == "padded")
        for run in runs:
            print(
                f"| {width} | {run['label']} | {run['pairs_per_s']:.1f} | {run['pairs_per_s'] / baseline:.2f}× "
                f"| {run['cells']:.0f} | {run['tokens']:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
