"""Training-step throughput and peak memory on a fixed synthetic workload (a baseline for later work).

    python benchmarks/train_throughput.py [--steps 12] [--device cpu|cuda]

Each configuration runs in a fresh process (so peak memory is its own): a random-init Llama, random token
pairs with fixed lengths (prompt 48, chosen 32, rejected 24 tokens), the real DPOLitModule under a real
Lightning Trainer. pairs/s and tokens/s exclude the first (warm-up) step. Peak memory is the process's peak
RSS on CPU, or peak allocated CUDA memory on a GPU.
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import resource
import sys

import lightning as L
import torch
from torch.utils.data import DataLoader

from dpo_lightning.data.collate import collate_padded
from dpo_lightning.data.tokenize import TokenizedPair
from dpo_lightning.training.module import DPOLitModule
from dpo_lightning.training.throughput import Throughput

PROMPT, CHOSEN, REJECTED, VOCAB = 48, 32, 24, 2048
WIDTHS = {"tiny": (128, 384, 4), "small": (256, 768, 4)}  # hidden, MLP, layers
CONFIGS = [  # (model, loss, pairs per step)
    ("tiny", "dpo", 16),
    ("tiny", "dpo", 64),
    ("tiny", "sft", 64),
    ("small", "dpo", 16),
    ("small", "dpo", 64),
]


def _model_config(width: str) -> dict:
    hidden, mlp, layers = WIDTHS[width]
    return {
        "name": width,
        "name_or_path": None,
        "architecture": "llama",
        "config": {
            "vocab_size": VOCAB,
            "hidden_size": hidden,
            "intermediate_size": mlp,
            "num_hidden_layers": layers,
            "num_attention_heads": hidden // 32,
            "num_key_value_heads": hidden // 32,
            "max_position_embeddings": 256,
            "eos_token_id": 1,
            "pad_token_id": 2,
        },
        "init_seed": 0,
        "dtype": "float32",
        "attn_implementation": "sdpa",
        "disable_dropout": True,
        "trust_remote_code": False,
    }


def _pairs(count: int) -> list[TokenizedPair]:
    rng = random.Random(0)

    def tokens(n: int) -> list[int]:
        return [rng.randrange(3, VOCAB) for _ in range(n)]

    return [TokenizedPair(tokens(PROMPT), tokens(CHOSEN), tokens(REJECTED)) for _ in range(count)]


def measure(width: str, loss: str, batch_size: int, steps: int, device: str) -> dict:
    """Train `steps` steps and return throughput and peak memory of this process."""
    torch.manual_seed(0)
    baseline_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # after imports, before the model
    module = DPOLitModule(
        model=_model_config(width),
        loss={"_target_": f"dpo_lightning.losses.{loss}.{loss.upper()}", **({"beta": 0.1} if loss == "dpo" else {})},
        optimizer={"_target_": "torch.optim.AdamW", "lr": 1e-4, "warmup_steps": 0},
    )
    loader = DataLoader(_pairs(batch_size * steps), batch_size=batch_size, collate_fn=lambda p: collate_padded(p, 2))
    throughput = Throughput()
    trainer = L.Trainer(
        accelerator=device,
        devices=1,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[throughput],
        limit_val_batches=0,
    )
    trainer.fit(module, train_dataloaders=loader)
    if device == "cuda":
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    parameters = sum(p.numel() for p in module.policy.parameters())
    return {
        "params_m": parameters / 1e6,
        "peak_mib": peak_mib,
        "baseline_mib": baseline_mib,
        **throughput.totals(world_size=1),
    }


def _run_in_child(queue: multiprocessing.Queue, *args) -> None:
    queue.put(measure(*args))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12, help="training steps per configuration (first excluded)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to train")
    args = parser.parse_args()

    context = multiprocessing.get_context("spawn")
    memory = "peak RSS MiB (before model)" if args.device == "cpu" else "peak CUDA MiB"
    header = f"| model | params | loss | pairs/step | pairs/s | tokens/s | {memory} |"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}", file=sys.stderr)
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for width, loss, batch_size in CONFIGS:
        queue = context.Queue()
        child = context.Process(target=_run_in_child, args=(queue, width, loss, batch_size, args.steps, args.device))
        child.start()
        result = queue.get()
        child.join()
        print(
            f"| {width} | {result['params_m']:.1f}M | {loss} | {batch_size} | {result['train/pairs_per_s']:.1f} "
            f"| {result['train/tokens_per_s']:.0f} | {result['peak_mib']:.0f}"
            + (f" ({result['baseline_mib']:.0f}) |" if args.device == "cpu" else " |"),
            flush=True,
        )


if __name__ == "__main__":
    main()
