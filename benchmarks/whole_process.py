"""Ours against TRL's `DPOTrainer` as whole processes: each system run as its user runs it, measured from outside.

    pip install -e ".[bench]"
    python benchmarks/whole_process.py [--short 4] [--long 36] [--batch-size 8] [--only KEY …]

`trl_comparison.py` times the training step inside one process; this script answers what a user sees. Both
systems read one model folder and one JSONL of pairs (`trl_comparison`'s workload: byte-level BPE of 8,192 tokens,
random-init Llama with 4 layers of width 256, HH-like synthetic pairs; identical weights and text):

- ours: `python train.py task=local model=hf …` — Hydra, data loading and tokenization, the Lightning Trainer,
  checkpoint and export at the end — with `reference=model` (live) or `reference=precomputed`;
- TRL: a script that loads the same folder and JSONL and runs `DPOTrainer.train()` with `trl_comparison`'s
  `DPOConfig` (live reference, or `precompute_ref_log_probs=True`).

Every configuration runs twice in a fresh process, for `--short` and for `--long` optimizer steps of
`--batch-size` pairs, fp32 on the CPU, no validation, no gradient clipping, AdamW. Its figures:

- s/step = (wall(long) − wall(short)) ÷ (long − short): the marginal cost of a training step, with what a process
  does once (imports, model loading, tokenization, a precompute pass over the file, export) cancelled out; pairs/s
  is the batch size over it;
- start-up = wall(short) − short · s/step: the seconds outside the steps;
- peak RSS: the long run's maximum resident set size (`os.wait4`'s ru_maxrss): everything the process held —
  imports, data, the models or the reference cache, the precompute pass, optimizer state.

Ratios are like for like: ours live ÷ TRL live, ours precomputed ÷ TRL precomputed. The targets (pairs/s ≥ 5×
TRL's, peak RSS ≤ 0.6× TRL's, each with the same kind of reference) are marked met or missed. Each configuration
runs `--repeat` times (interleaved) and keeps its fastest marginal step. About 8 minutes on 2 idle CPU cores with
the defaults; other load on the machine distorts the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from trl_comparison import BETA, build_model, build_tokenizer, trl_config, write_pairs

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {  # key → (system, reference)
    "trl-live": ("TRL", "live"),
    "trl-precomputed": ("TRL", "precomputed"),
    "ours-live": ("ours", "live"),
    "ours-precomputed": ("ours", "precomputed"),
}
TARGET_SPEEDUP, TARGET_RSS = 5.0, 0.6
LEARNING_RATE = 1e-3


def ours_command(folder: Path, steps: int, batch_size: int, reference: str, run_dir: Path) -> list[str]:
    """`train.py` on the workload: `steps` optimizer steps, nothing else in the loop (no validation, no sampling)."""
    return [
        *(sys.executable, str(ROOT / "train.py"), "task=local", f"task.source.path={folder / 'pairs.jsonl'}"),
        *("task.source.val_size=8", "task.tokenize.max_length=4096", "task.tokenize.max_prompt_length=2048"),
        *("model=hf", f"model.name_or_path={folder / 'model'}", f"optimizer.lr={LEARNING_RATE}"),
        f"reference={'model' if reference == 'live' else 'precomputed'}",
        *(f"beta={BETA}", f"data.batch_size={batch_size}", f"trainer.max_steps={steps}", "trainer.accelerator=cpu"),
        *("trainer.limit_val_batches=0", "trainer.gradient_clip_val=null", "samples.num_prompts=0"),
        *("trainer.enable_progress_bar=false", "logger=none", f"hydra.run.dir={run_dir}"),
    ]


def trl_command(folder: Path, steps: int, batch_size: int, reference: str, run_dir: Path) -> list[str]:
    """This script as TRL's child (`--trl`)."""
    child = ["--trl", str(folder), str(steps), str(batch_size), reference, str(run_dir)]
    return [sys.executable, str(Path(__file__).resolve()), *child]


def train_trl(folder: Path, steps: int, batch_size: int, reference: str, run_dir: Path) -> None:
    """TRL's `DPOTrainer` as a user script: load the folder and the JSONL, train `steps` steps."""
    from datasets import load_dataset
    from transformers import AutoTokenizer
    from trl import DPOTrainer

    args = trl_config(str(run_dir), batch_size, steps, LEARNING_RATE, precompute=reference == "precomputed")
    tokenizer = AutoTokenizer.from_pretrained(folder / "model")
    dataset = load_dataset("json", data_files=str(folder / "pairs.jsonl"), split="train")
    trainer = DPOTrainer(model=str(folder / "model"), args=args, train_dataset=dataset, processing_class=tokenizer)
    trainer.train()


def measure(command: list[str], cache: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one process with its own `datasets` cache (`cache`: no run reuses another's
    tokenization or precomputed reference); its output goes to a log, shown if it fails."""
    environment = {**os.environ, "HF_DATASETS_CACHE": str(cache)}
    with tempfile.TemporaryFile(mode="w+") as log:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            log.seek(0)
            raise RuntimeError(f"{' '.join(command[:4])} … failed ({process.returncode}):\n{log.read()[-3000:]}")
    return wall, usage.ru_maxrss / 1024  # Linux: KiB


def run_configuration(key: str, folder: Path, args: argparse.Namespace) -> dict[str, float]:
    system, reference = CONFIGS[key]
    build = trl_command if system == "TRL" else ours_command
    (short_s, _), (long_s, peak) = (
        measure(build(folder, steps, args.batch_size, reference, Path(run_dir)), Path(run_dir) / "datasets")
        for steps, run_dir in ((args.short, tempfile.mkdtemp(dir=folder)), (args.long, tempfile.mkdtemp(dir=folder)))
    )
    step_s = (long_s - short_s) / (args.long - args.short)
    return {"step_s": step_s, "pairs_s": args.batch_size / step_s, "startup_s": short_s - args.short * step_s,
            "peak_mib": peak}  # fmt: skip


def print_report(rows: dict[str, dict[str, float]], args: argparse.Namespace) -> None:
    print(
        f"| system | reference | s/step (marginal) | pairs/s | start-up s | peak RSS MiB | pairs/s ÷ TRL (same "
        f"reference) | RSS ÷ TRL (same reference) | pairs/s ≥ {TARGET_SPEEDUP:g}× | RSS ≤ {TARGET_RSS:g}× |"
    )
    print("|---" * 10 + "|")
    for key, row in rows.items():
        system, reference = CONFIGS[key]
        trl = rows.get(f"trl-{reference}")
        cells = ["", "", "", ""]
        if system == "ours" and trl is not None:
            speedup, memory = row["pairs_s"] / trl["pairs_s"], row["peak_mib"] / trl["peak_mib"]
            cells = [f"{speedup:.2f}×", f"{memory:.2f}×", _mark(speedup >= TARGET_SPEEDUP), _mark(memory <= TARGET_RSS)]
        print(
            f"| {system} | {reference} | {row['step_s']:.3f} | {row['pairs_s']:.2f} | {row['startup_s']:.1f} "
            f"| {row['peak_mib']:.0f} | " + " | ".join(cells) + " |"
        )
    print(
        f"\n{args.batch_size} pairs/step; s/step from {args.short} and {args.long} steps; best of {args.repeat} "
        f"round(s); torch threads: {os.environ.get('OMP_NUM_THREADS', 'default')}"
    )


def _mark(ok: bool) -> str:
    return "met" if ok else "**missed**"


def main() -> None:
    if sys.argv[1:2] == ["--trl"]:  # the TRL child
        folder, steps, batch_size, reference, run_dir = sys.argv[2:]
        train_trl(Path(folder), int(steps), int(batch_size), reference, Path(run_dir))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", type=int, default=4, help="optimizer steps of the short run")
    parser.add_argument("--long", type=int, default=36, help="optimizer steps of the long run")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per optimizer step, for every system")
    parser.add_argument("--repeat", type=int, default=1, help="interleaved rounds; keep each one's fastest step")
    parser.add_argument("--only", nargs="+", choices=list(CONFIGS), default=list(CONFIGS), help="run these only")
    args = parser.parse_args()
    if not 1 <= args.short < args.long:
        parser.error("need 1 ≤ --short < --long")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="whole-process-") as temporary:
        folder = Path(temporary)
        os.environ.update(  # inherited by every child: nothing from the network, caches in the temporary folder
            HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", TQDM_DISABLE="1", WANDB_MODE="disabled",
        )  # fmt: skip
        tokenizer = build_tokenizer(folder / "model")
        build_model(folder / "model", len(tokenizer))
        write_pairs(folder / "pairs.jsonl", args.batch_size * args.long + 8)  # + the validation hold-out
        rows: dict[str, dict[str, float]] = {}
        for round_ in range(args.repeat):
            for key in args.only:
                print(f"running {key} (round {round_ + 1}/{args.repeat}) …", file=sys.stderr, flush=True)
                row = run_configuration(key, folder, args)
                print(f"  {key}: {json.dumps({k: round(v, 3) for k, v in row.items()})}", file=sys.stderr, flush=True)
                if key not in rows or row["step_s"] < rows[key]["step_s"]:
                    rows[key] = row
    print_report(rows, args)
    print(f"total {time.perf_counter() - started:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
