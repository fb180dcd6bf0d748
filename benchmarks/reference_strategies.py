"""Peak memory and throughput of each reference strategy (`reference=`), side by side on one workload.

    python benchmarks/reference_strategies.py [--width tiny|small|medium] [--batch-size 16] [--steps 12]
                                              [--device cpu|cuda] [--only STRATEGY …]

The workload, the measurement and the fresh process per configuration are `train_throughput.py`'s (imported,
not copied): a random-init Llama of the given width, random pairs of fixed lengths, the real DPOLitModule under
a real Lightning Trainer; pairs/s excludes the first step; peak memory is the process's peak RSS on CPU, or
peak allocated CUDA memory. `precomputed` first computes its cache in a process of its own (timed in the last
column), so its peak is that of training, which holds no reference model.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
import train_throughput
from safetensors.torch import save_file
from torch.utils.data import DataLoader
from train_throughput import WIDTHS, _model_config, _pairs

from dpo_lightning.data.collate import collate_padded
from dpo_lightning.models.loading import build_model
from dpo_lightning.models.reference import (
    FrozenCopy,
    LoraAdapters,
    PeriodicSync,
    Precomputed,
    ReferenceFree,
    ReferenceStrategy,
)
from dpo_lightning.models.reference_cache import compute_table
from dpo_lightning.training.module import DPOLitModule

# One more width, for a GPU, where the reference's own memory stands out from the activations' (≈107M parameters).
WIDTHS.setdefault("medium", (1024, 2816, 8))
LORA = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": None, "merge_on_export": True}
STRATEGIES = {  # label → (reference strategy, what is held besides the trained policy)
    "model": (FrozenCopy(), "a frozen fp32 copy"),
    "model, dtype=bfloat16": (FrozenCopy(dtype="bfloat16"), "a frozen bf16 copy"),
    "precomputed": (Precomputed(), "24 bytes a pair"),
    "lora": (LoraAdapters(lora=LORA), "nothing (adapters off)"),
    "sync": (PeriodicSync(alpha=0.6, every_n_steps=4), "a copy, mixed every 4 steps"),
    "none": (ReferenceFree(), "nothing (π_ref ≡ 1)"),
}


def _precompute(queue: multiprocessing.Queue, width: str, batch_size: int, steps: int, device: str, path: str) -> None:
    """The `precomputed` cache of the benchmark's pairs (the initial policy is the reference)."""
    started = time.perf_counter()
    model = build_model(_model_config(width)).to(device).eval()
    loader = DataLoader(_pairs(batch_size * steps), batch_size=batch_size, collate_fn=lambda p: collate_padded(p, 2))
    save_file(compute_table(model, loader, torch.device(device)), path)
    queue.put(time.perf_counter() - started)


def _train(
    queue: multiprocessing.Queue, reference: ReferenceStrategy, width: str, batch_size: int, steps: int, device: str
) -> None:
    # `train_throughput.measure` builds its module by this name: give it the strategy to benchmark.
    train_throughput.DPOLitModule = partial(DPOLitModule, reference=reference)
    queue.put(train_throughput.measure(width, "dpo", batch_size, steps, device))


def _in_child(context, target, *args):
    queue = context.Queue()
    child = context.Process(target=target, args=(queue, *args))
    child.start()
    result = queue.get()
    child.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", default="tiny", choices=sorted(WIDTHS), help="model width (train_throughput.py)")
    parser.add_argument("--batch-size", type=int, default=16, help="pairs per step")
    parser.add_argument("--steps", type=int, default=12, help="training steps per strategy (first excluded)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to train")
    parser.add_argument("--only", nargs="*", choices=list(STRATEGIES), help="benchmark these strategies only")
    args = parser.parse_args()

    context = multiprocessing.get_context("spawn")
    workload = (args.width, args.batch_size, args.steps, args.device)
    memory = "peak RSS MiB (before model)" if args.device == "cpu" else "peak CUDA MiB"
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, width {args.width}, "
        f"{args.batch_size} pairs/step, {args.steps} steps",
        file=sys.stderr,
    )
    header = f"| reference | held besides the policy | pairs/s | {memory} | precompute s |"
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    with tempfile.TemporaryDirectory() as folder:
        for label in args.only or STRATEGIES:
            reference, held = STRATEGIES[label]
            precompute = ""
            if isinstance(reference, Precomputed):
                cache_file = str(Path(folder) / "cache.safetensors")
                precompute = f"{_in_child(context, _precompute, *workload, cache_file):.1f}"
                reference = Precomputed(cache_file=cache_file)
            result = _in_child(context, _train, reference, *workload)
            peak = f"{result['peak_mib']:.0f}" + (f" ({result['baseline_mib']:.0f})" if args.device == "cpu" else "")
            print(
                f"| `{label}` | {held} | {result['train/pairs_per_s']:.1f} | {peak} | {precompute} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
