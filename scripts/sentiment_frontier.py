"""The DPO paper's controlled-sentiment experiment (§6.1, Figure 2 left), offline, on a CPU.

    python scripts/sentiment_frontier.py [--out outputs/sentiment-frontier] [--betas 0.05 0.1 0.5 1 2] [--quick]

    1. SFT        python train.py loss=sft                       the tiny model learns to write reviews
    2. pairs      python -m dpo_lightning.cli.pairs policy=SFT   2 samples per prompt, VADER picks chosen
    3. DPO        python train.py -m loss=dpo beta=…             from the SFT model, on those pairs
    4. baselines  python train.py -m loss=preferred_ft,unlikelihood   same pairs, same start, lr 1e-4 and 1e-3
    5. frontier   reward of policy samples against KL(π ‖ π_SFT), one point per validation of every run

Every step is an ordinary command of the project (printed before it runs); a step whose output already
exists is skipped, so an interrupted reproduction continues where it stopped. `--quick` is the reduced
version the tests run: fewer pairs, prompts and steps. Its frontier (β 0.1 and 1) is committed as
`scripts/sentiment-frontier-quick.csv`, and `tests/eval/test_reproduction.py` fails when today's code gives other
numbers: then the full reproduction's committed figures (docs/evaluation.md, docs/sentiment-frontier.*) are stale too.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dpo_lightning.eval.frontier import collect_points, format_table, write_frontier  # noqa: E402

# The second stage's settings, shared by DPO (lr 1e-4) and the baselines (lr swept): the generated pairs, the SFT
# start, VADER as the ground-truth reward, and a validation (= a frontier point) every 32 steps.
FULL = {
    "sft": ["trainer.val_check_interval=64"],
    "pairs": ["num_prompts.train=4096", "num_prompts.validation=256"],
    "baseline_learning_rates": "1e-4,1e-3",
    "second_stage": [
        "samples.num_prompts=256",
        "trainer.val_check_interval=32",
    ],
}
QUICK = {
    "sft": ["task.source.num_train_pairs=256", "task.source.num_val_pairs=16", "trainer.val_check_interval=8"],
    "pairs": ["num_prompts.train=64", "num_prompts.validation=8", "sampling.max_new_tokens=16"],
    "baseline_learning_rates": "1e-4",
    "second_stage": [
        "samples.num_prompts=8",
        "samples.max_new_tokens=16",
        "data.batch_size=16",
        "trainer.val_check_interval=2",
    ],
}


def run_command(command: list[str], log: Path) -> None:
    """Run one project command from the repository root, echoing it; its output goes to `log`."""
    print(f"$ {shlex.join(command)}", flush=True)
    started = time.perf_counter()
    with log.open("w") as output:
        result = subprocess.run(command, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        tail = log.read_text().splitlines()[-5:]
        sys.exit(
            f"failed ({result.returncode}) after {time.perf_counter() - started:.0f} s; see {log}:\n" + "\n".join(tail)
        )
    print(f"  done in {time.perf_counter() - started:.0f} s", flush=True)


def completed(run_dir: Path) -> bool:
    summary = run_dir / "summary.json"
    return summary.is_file() and json.loads(summary.read_text())["status"] == "completed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "sentiment-frontier", help="output folder")
    parser.add_argument("--betas", type=float, nargs="+", default=[0.05, 0.1, 0.5, 1.0, 2.0], help="DPO β values")
    parser.add_argument("--quick", action="store_true", help="the reduced version (tests)")
    args = parser.parse_args()
    settings = QUICK if args.quick else FULL
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    python, started = sys.executable, time.perf_counter()

    sft = out / "sft"
    if not completed(sft):
        run_command([python, "train.py", "loss=sft", *settings["sft"], f"hydra.run.dir={sft}"], out / "sft.log")
    pairs = out / "pairs"
    if not (pairs / "provenance.json").is_file():
        command = [python, "-m", "dpo_lightning.cli.pairs", f"policy={sft}", *settings["pairs"]]
        run_command([*command, f"hydra.run.dir={pairs}"], out / "pairs.log")

    second_stage = [
        "task=local",
        f"task.source.path={pairs / 'train.parquet'}",
        f"task.source.val_path={pairs / 'validation.parquet'}",
        f"model.init_from={sft}",
        "reward@task.reward=vader",
        *settings["second_stage"],
    ]
    sweeps = {
        "dpo": ["loss=dpo", f"beta={','.join(str(beta) for beta in args.betas)}", "model.learning_rate=1e-4"],
        # The baselines have no β; how far they move depends on the learning rate, so that is what they sweep.
        "baselines": ["loss=preferred_ft,unlikelihood", f"model.learning_rate={settings['baseline_learning_rates']}"],
    }
    for name, choices in sweeps.items():
        sweep = out / "sweep" / name
        if not (sweep / "multirun.yaml").is_file() or not all(completed(job) for job in sweep.glob("[0-9]*")):
            run_command(
                [python, "train.py", "-m", *second_stage, *choices, f"hydra.sweep.dir={sweep}"], out / f"{name}.log"
            )

    points = collect_points(out / "sweep", per_validation=True)
    csv_path, png_path = write_frontier(points, out, "Controlled sentiment (offline): reward–KL frontier")
    print(format_table(points))
    print(f"{csv_path}\n{png_path}\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
