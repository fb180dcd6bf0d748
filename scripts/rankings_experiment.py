"""Plackett–Luce DPO on whole rankings against pairwise DPO on all pairs of the same rankings, at equal wall-clock.

    python scripts/rankings_experiment.py [--out DIR] [--budget-s 90] [--betas 0.1 0.5] [--seed 0] [--quick]

    1. SFT      python train.py loss=sft                     the tiny model learns to write reviews (as in
                                                             scripts/sentiment_frontier.py)
    2. methods  python train.py -m task.source.responses_per_prompt=4 model.init_from=SFT beta=… trainer.max_time=…
                   plackett_luce     loss=plackett_luce                                 whole rankings
                   dpo_all_pairs     loss=dpo data.rankings=whole data.ranking_pairs=all   the same rankings' 6 pairs,
                                                                                        each response computed once
                   dpo_flattened     loss=dpo data.rankings=pairs data.ranking_pairs=all   the same pairs as rows of
                                                                                        their own (every framework)
    3. table    reward and KL(π ‖ π_SFT) of policy samples, ranking metrics and throughput of every run

Every run trains for the same wall-clock budget (`trainer.max_time`, data loading and the final validation
excluded) on `task=sentiment` with K = 4 VADER-scored continuations per prompt. A step holds the same rankings in
every method: 32 rankings, or (dpo_flattened) their 6 × 32 = 192 pairs, so dpo_all_pairs and dpo_flattened take
identical steps (tests/data/test_rankings.py) and differ only in speed. A step whose output exists is skipped. `--quick`
is the reduced version the tests run: no SFT stage, tiny data, a 3-second budget.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from sentiment_frontier import completed, run_command  # noqa: E402

from dpo_lightning.eval.frontier import collect_points, write_frontier  # noqa: E402

RANKINGS_PER_STEP = 32
PAIRS_PER_RANKING = 6  # K = 4: K(K − 1)/2
METHODS = {
    "plackett_luce": ["loss=plackett_luce", "data.rankings=whole", f"data.batch_size={RANKINGS_PER_STEP}"],
    "dpo_all_pairs": ["loss=dpo", "data.rankings=whole", f"data.batch_size={RANKINGS_PER_STEP}"],
    "dpo_flattened": ["loss=dpo", "data.rankings=pairs", f"data.batch_size={RANKINGS_PER_STEP * PAIRS_PER_RANKING}"],
}
COMMON = [
    "task.source.responses_per_prompt=4",
    "data.ranking_pairs=all",
    "data.eval_batch_size=64",
    "model.learning_rate=1e-4",
    "trainer.max_steps=-1",
    "trainer.max_epochs=1000",
    "trainer.val_check_interval=1000000",  # validate once, after training: validation is not in the budget
    "trainer.num_sanity_val_steps=0",
]
FULL = {"sft": [], "runs": ["samples.num_prompts=256"]}
QUICK = {
    "sft": None,  # no SFT stage: the methods start from the random initial model
    "runs": [
        "task.source.num_train_pairs=64",
        "task.source.num_val_pairs=8",
        "samples.num_prompts=8",
        "samples.max_new_tokens=16",
    ],
}
COLUMNS = ("method", "beta", "steps", "rankings/s", "pairs/s", "reward", "kl", "kendall_tau", "top1", "accuracy")


def _row(method: str, summary: dict) -> dict[str, object]:
    metrics = summary["metrics"]
    steps = summary["global_step"]
    if method == "dpo_flattened":  # its examples are pairs: PAIRS_PER_RANKING make one ranking
        rankings_per_s = metrics["train/pairs_per_s"] / PAIRS_PER_RANKING
    else:
        rankings_per_s = metrics["train/rankings_per_s"]
    return {
        "method": method,
        "beta": summary["config"]["beta"],
        "steps": steps,
        "rankings/s": round(rankings_per_s, 1),
        "pairs/s": round(metrics["train/pairs_per_s"], 1),
        "reward": round(metrics.get("val/reward", float("nan")), 3),
        "kl": round(metrics.get("val/kl", float("nan")), 2),
        "kendall_tau": round(metrics.get("val/ranking/kendall_tau", float("nan")), 3),
        "top1": round(metrics.get("val/ranking/top1", float("nan")), 3),
        "accuracy": round(metrics.get("val/rewards/accuracies", float("nan")), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "rankings-experiment", help="output folder")
    parser.add_argument("--budget-s", type=int, default=90, help="training wall-clock seconds of every run")
    parser.add_argument("--betas", type=float, nargs="+", default=[0.1, 0.5], help="β values of every method")
    parser.add_argument("--seed", type=int, default=0, help="seed of the methods' runs (data order, sampling)")
    parser.add_argument("--quick", action="store_true", help="the reduced version (tests)")
    args = parser.parse_args()
    settings = QUICK if args.quick else FULL
    budget_s = 3 if args.quick else args.budget_s
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    python, started = sys.executable, time.perf_counter()

    start = []
    if settings["sft"] is not None:
        sft = out / "sft"
        if not completed(sft):
            run_command([python, "train.py", "loss=sft", *settings["sft"], f"hydra.run.dir={sft}"], out / "sft.log")
        start = [f"model.init_from={sft}"]

    duration = time.strftime("00:%H:%M:%S", time.gmtime(budget_s))
    runs = [*COMMON, *start, *settings["runs"], f"trainer.max_time={duration}", f"seed={args.seed}"]
    betas = f"beta={','.join(str(beta) for beta in args.betas)}"
    rows, points = [], []
    for method, overrides in METHODS.items():
        sweep = out / "sweep" / method
        if not (sweep / "multirun.yaml").is_file() or not all(completed(job) for job in sweep.glob("[0-9]*")):
            command = [python, "train.py", "-m", *runs, *overrides, betas, f"hydra.sweep.dir={sweep}"]
            run_command(command, out / f"{method}.log")
        for job in sorted(sweep.glob("[0-9]*")):
            rows.append(_row(method, json.loads((job / "summary.json").read_text())))
        points += [dataclasses.replace(point, series=method) for point in collect_points(sweep, per_validation=False)]

    write_frontier(points, out, f"Rankings (K = 4, {budget_s} s each, seed {args.seed}): reward–KL")
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    print("| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS))
    for row in rows:
        print("| " + " | ".join(str(row[column]) for column in COLUMNS) + " |")
    print(f"{out / 'results.json'}\n{out / 'frontier.png'}\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
