"""Offline DPO vs online DPO vs iterative DPO vs Best-of-N on the offline sentiment task, from one SFT model.

    python scripts/on_policy_experiment.py [--out outputs/on-policy] [--seeds 0 1] [--seconds 45] [--quick]

    1. SFT             python train.py loss=sft                               the tiny model learns to write reviews
    2. pairs           python -m dpo_lightning.cli.pairs policy=SFT           2 samples per prompt, VADER picks chosen
    3. reward model    python train.py algorithm=reward_model task=local …   Bradley–Terry on those pairs, from SFT
    4. per seed, each method trained for the same wall-clock (`trainer.max_time` = --seconds), all from SFT, β = 0.1:
         offline       python train.py task=local (the SFT pairs) loss=dpo
         online-vader  python train.py algorithm=online                       labeller: VADER (the true reward)
         online-rm     python train.py algorithm=online labeller@algorithm.labeller=reward_model
         iterative     python train.py algorithm=iterative algorithm.rounds=3  each round a third of the time
    5. Best-of-N       python -m dpo_lightning.cli.best_of_n policy=SFT       N ∈ {1, 2, 4, 16, 64}; VADER, RM pick
    6. evaluation      every final policy: VADER reward of its samples and KL(π ‖ π_SFT) on the same validation
                       prompts (`eval.policy_eval.reward_and_kl`), the frontier's points; seed means ± standard error

Every step is an ordinary command of the project (printed before it runs); a step whose output exists is skipped, so
an interrupted experiment continues where it stopped. Writes experiment.csv (every point), experiment.json (points,
reward-model accuracy and agreement with VADER, wall-clock per run) and experiment.png into --out. `--quick` is the
reduced version a test runs (minutes, not a result).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import torch  # noqa: E402
from sentiment_frontier import completed, run_command  # noqa: E402

from dpo_lightning.data.prompts import PromptTokenizer, task_prompts  # noqa: E402
from dpo_lightning.data.sources.sentiment import SentimentSource  # noqa: E402
from dpo_lightning.data.tokenize import TokenizeSettings  # noqa: E402
from dpo_lightning.eval.classifier import ClassifierScorer  # noqa: E402
from dpo_lightning.eval.frontier import FrontierPoint, plot_frontier  # noqa: E402
from dpo_lightning.eval.policy_eval import reward_and_kl  # noqa: E402
from dpo_lightning.eval.rewards import VaderReward  # noqa: E402
from dpo_lightning.eval.sampling import SamplingSettings, completion_text, sample_completions  # noqa: E402
from dpo_lightning.models.loading import build_model, load_tokenizer, model_config  # noqa: E402

FULL = {
    "sft": ["trainer.max_steps=160", "trainer.val_check_interval=80"],
    "pairs": ["num_prompts.train=2048", "num_prompts.validation=256"],
    "reward_model": ["trainer.max_steps=96", "optimizer.lr=1e-4"],
    "evaluation_prompts": 256,
    "best_of_n": ["num_prompts=64", "ns=[1,2,4,16,64]"],
    "online": ["algorithm.max_prompts=4096"],
    "iterative": ["algorithm.prompts_per_round=512", "algorithm.validation_prompts=64"],
}
QUICK = {
    "sft": ["trainer.max_steps=8", "task.source.num_train_pairs=256", "task.source.num_val_pairs=16"],
    "pairs": ["num_prompts.train=64", "num_prompts.validation=16"],
    "reward_model": ["trainer.max_steps=4"],
    "evaluation_prompts": 16,
    "best_of_n": ["num_prompts=4", "ns=[1,2,4]"],
    "online": ["algorithm.max_prompts=64", "task.source.num_train_pairs=64", "task.source.num_val_pairs=16"],
    "iterative": [
        "algorithm.prompts_per_round=16",
        "algorithm.validation_prompts=8",
        "task.source.num_train_pairs=64",
        "task.source.num_val_pairs=16",
    ],
}
# Shared by every trained method: the SFT start, β, learning rate, batch, sampling lengths, no mid-run sampling.
SECOND_STAGE = [
    "beta=0.1",
    "model.learning_rate=1e-4",
    "data.batch_size=32",
    "samples.num_prompts=0",  # this script evaluates every final policy itself, on the same prompts
    "trainer.val_check_interval=100000",
    "trainer.max_epochs=1000",  # the time limit, not the data, ends every run
    "trainer.enable_progress_bar=false",
]
SAMPLING = SamplingSettings(max_new_tokens=32, batch_size=64, seed=1234)  # the evaluation's samples
TOKENS = ["algorithm.sampling.max_new_tokens=32"]  # rollouts as long as the evaluation's samples


def max_time(seconds: float) -> str:
    """`trainer.max_time` as DD:HH:MM:SS."""
    whole = max(1, round(seconds))
    return f"trainer.max_time=00:{whole // 3600:02d}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def train(name: str, out: Path, overrides: list[str]) -> Path:
    """`python train.py <overrides>` into out/<name> unless it completed; its run folder."""
    folder = out / name
    if not completed(folder):
        folder.parent.mkdir(parents=True, exist_ok=True)
        run_command([sys.executable, "train.py", *overrides, f"hydra.run.dir={folder}"], out / f"{name}.log")
    return folder


def evaluation_prompts(count: int) -> list[list[int]]:
    """The first `count` validation prompts of the sentiment task, tokenized as training tokenizes them."""
    source = SentimentSource(labeller=VaderReward(), num_train_pairs=16, num_val_pairs=max(count, 16))
    texts = [prompt for _, prompt in zip(range(count), task_prompts(source, "validation"), strict=False)]
    tokenizer = load_tokenizer(model_config("tiny"))
    encode = PromptTokenizer(tokenizer, TokenizeSettings(max_length=64, max_prompt_length=32), SAMPLING.max_new_tokens)
    return [ids for ids, _ in encode(texts)]


def agreement(scorer: ClassifierScorer, policy_folder: Path, prompts: list[list[int]]) -> dict[str, float]:
    """How often the reward model orders two fresh samples of the run `policy_folder`'s policy as VADER does (pairs
    VADER does not tie), and the correlation of their scores."""
    tokenizer = load_tokenizer(model_config(str(policy_folder / "policy")))
    model = build_model(model_config(str(policy_folder / "policy")))
    samples = sample_completions(model, prompts, tokenizer, SAMPLING, num_samples=2)
    texts = [completion_text(tokenizer, prompts[k // 2], sample) for k, sample in enumerate(samples)]
    vader = VaderReward()([p for p, _ in texts], [c for _, c in texts])
    model_scores = scorer.scores([p + c for p, c in texts])
    pairs = [(2 * i, 2 * i + 1) for i in range(len(prompts)) if vader[2 * i] != vader[2 * i + 1]]
    agree = [(vader[a] > vader[b]) == (model_scores[a] > model_scores[b]) for a, b in pairs]
    correlation = torch.corrcoef(torch.tensor([vader, model_scores], dtype=torch.float64))[0, 1].item()
    return {"pairs": len(pairs), "agreement": sum(agree) / max(len(agree), 1), "correlation": correlation}


def wall_clock(folder: Path) -> float:
    return float(json.loads((folder / "summary.json").read_text()).get("wall_time_s", math.nan))


def first_stage(out: Path, plan: dict) -> tuple[Path, list[str], Path]:
    """SFT, pairs sampled from it and labelled by VADER, and a reward model on those pairs (each skipped when it
    exists): the SFT run folder, the overrides that train on the pairs (`task=local`), the reward-model run folder."""
    sft = train("sft", out, ["loss=sft", "samples.num_prompts=0", *plan["sft"]])
    pairs = out / "pairs"
    if not (pairs / "provenance.json").is_file():
        command = [sys.executable, "-m", "dpo_lightning.cli.pairs", f"policy={sft}", "sampling.max_new_tokens=32"]
        run_command([*command, *plan["pairs"], f"hydra.run.dir={pairs}"], out / "pairs.log")
    on_pairs = [
        "task=local",
        f"task.source.path={pairs / 'train.parquet'}",
        f"task.source.val_path={pairs / 'validation.parquet'}",
    ]
    rm = train(
        "reward_model", out, ["algorithm=reward_model", *on_pairs, f"model.init_from={sft}", *plan["reward_model"]]
    )
    return sft, on_pairs, rm


def run_best_of_n(out: Path, plan: dict, sft: Path, rm_policy: Path) -> dict[str, list[dict[str, str]]]:
    """Best-of-N from the SFT model, VADER and the reward model picking (each skipped when it exists): the rows of
    each labeller's best_of_n.csv."""
    rows = {}
    labellers = {"VADER": [], "reward model": ["labeller=reward_model", f"labeller.reward.name_or_path={rm_policy}"]}
    for labeller, overrides in labellers.items():
        name = f"best_of_n_{labeller.replace(' ', '_')}"
        if not (out / name / "best_of_n.csv").is_file():
            command = [sys.executable, "-m", "dpo_lightning.cli.best_of_n", f"policy={sft}", *plan["best_of_n"]]
            run_command([*command, *overrides, f"hydra.run.dir={out / name}"], out / f"{name}.log")
        rows[labeller] = list(csv.DictReader((out / name / "best_of_n.csv").open()))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "on-policy", help="output folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training seeds (≥ 2 for errors)")
    parser.add_argument("--seconds", type=float, default=45.0, help="training wall-clock of every method and seed")
    parser.add_argument("--quick", action="store_true", help="the reduced version (tests)")
    args = parser.parse_args()
    plan, out, started = (QUICK if args.quick else FULL), args.out.resolve(), time.perf_counter()

    sft, on_pairs, rm = first_stage(out, plan)
    rm_policy = rm / "policy"

    start, budget = [f"model.init_from={sft}", *SECOND_STAGE], max_time(args.seconds)
    methods = {
        "offline DPO (SFT pairs)": [*on_pairs, "reward@task.reward=vader", budget],
        "online DPO (VADER)": ["algorithm=online", *TOKENS, *plan["online"], budget],
        "online DPO (reward model)": [
            "algorithm=online", "labeller@algorithm.labeller=reward_model",
            f"algorithm.labeller.reward.name_or_path={rm_policy}", *TOKENS, *plan["online"], budget,
        ],
        "iterative DPO (3 rounds)": [
            "algorithm=iterative", "algorithm.rounds=3", *TOKENS, *plan["iterative"], max_time(args.seconds / 3),
        ],
    }  # fmt: skip
    runs: dict[str, list[Path]] = {name: [] for name in methods}
    for seed in args.seeds:
        for name, overrides in methods.items():
            folder = f"seed_{seed}/{name.split(' (')[0].replace(' ', '_').lower()}"
            folder += "_rm" if "reward model" in name else ""
            runs[name].append(train(folder, out, [*start, *overrides, f"seed={seed}"]))

    best_of_n = run_best_of_n(out, plan, sft, rm_policy)

    prompts = evaluation_prompts(plan["evaluation_prompts"])
    tokenizer, reference = (
        load_tokenizer(model_config(str(sft / "policy"))),
        build_model(model_config(str(sft / "policy"))),
    )
    vader = VaderReward()
    sft_point = reward_and_kl(reference, reference, prompts, tokenizer, SAMPLING, vader)
    points, rows = (
        [FrontierPoint("sft", "SFT", None, None, sft_point.reward, sft_point.reward_se, 0.0, 0.0, "completed")],
        [],
    )
    rows.append(
        {
            "method": "SFT",
            "seed": "",
            "reward": sft_point.reward,
            "reward_se": sft_point.reward_se,
            "kl": 0.0,
            "kl_se": 0.0,
        }
    )
    for name, folders in runs.items():
        seed_points = []
        for seed, folder in zip(args.seeds, folders, strict=True):
            final = folder / "round_3" if "iterative" in name else folder  # a run folder: its policy/
            policy = build_model(model_config(str(final / "policy")))
            point = reward_and_kl(policy, reference, prompts, tokenizer, SAMPLING, vader)
            seed_points.append(point)
            rows.append({"method": name, "seed": seed, "reward": point.reward, "reward_se": point.reward_se,
                         "kl": point.kl, "kl_se": point.kl_se, "wall_clock_s": wall_clock(folder)})  # fmt: skip
        rewards, kls = [p.reward for p in seed_points], [p.kl for p in seed_points]
        reward_se = (
            statistics.stdev(rewards) / math.sqrt(len(rewards)) if len(rewards) > 1 else seed_points[0].reward_se
        )
        kl_se = statistics.stdev(kls) / math.sqrt(len(kls)) if len(kls) > 1 else seed_points[0].kl_se
        points.append(
            FrontierPoint(
                name, name, None, None, statistics.mean(rewards), reward_se, statistics.mean(kls), kl_se, "completed"
            )
        )
        rows.append({"method": name, "seed": "mean", "reward": statistics.mean(rewards), "reward_se": reward_se,
                     "kl": statistics.mean(kls), "kl_se": kl_se})  # fmt: skip
    for labeller, bon_rows in best_of_n.items():
        for row in bon_rows:
            name = f"Best-of-N ({labeller})"
            reward, reward_se, kl = float(row["reward"]), float(row["reward_se"]), float(row["kl"])
            points.append(
                FrontierPoint(f"N={row['n']}", name, None, int(row["n"]), reward, reward_se, kl, None, "completed")
            )
            rows.append({"method": name, "seed": f"N={row['n']}", "reward": float(row["reward"]),
                         "reward_se": float(row["reward_se"]), "kl": float(row["kl"]), "kl_se": "",
                         "kl_measured": float(row["kl_measured"])})  # fmt: skip

    rm_summary = json.loads((rm / "summary.json").read_text())["metrics"]
    scorer = ClassifierScorer(str(rm_policy), positive_label=None)
    record = {
        "reward_model": {
            "held_out_accuracy": rm_summary.get("val/accuracy"),
            "held_out_pairs": str(out / "pairs" / "validation.parquet"),
            "agreement_with_vader": {
                "SFT samples": agreement(scorer, sft, prompts),
                "online DPO (reward model) samples, seed 0": agreement(
                    scorer, runs["online DPO (reward model)"][0], prompts
                ),
            },
        },
        "settings": {"seeds": args.seeds, "seconds": args.seconds, "quick": args.quick, "command": " ".join(sys.argv)},
        "rows": rows,
        "total_s": round(time.perf_counter() - started, 1),
    }
    out.mkdir(parents=True, exist_ok=True)
    with (out / "experiment.csv").open("w", newline="") as file:
        writer = csv.DictWriter(
            file, fieldnames=["method", "seed", "reward", "reward_se", "kl", "kl_se", "kl_measured", "wall_clock_s"]
        )
        writer.writeheader()
        writer.writerows(rows)
    (out / "experiment.json").write_text(json.dumps(record, indent=2) + "\n")
    plot_frontier(points, "Sentiment (offline): on-policy methods from one SFT model").savefig(
        out / "experiment.png", dpi=150
    )
    for row in rows:
        reward = f"reward {row['reward']:7.3f} ± {row['reward_se']:.3f}"
        print(f"{row['method']:<28} {row['seed']!s:>6}  {reward}  KL {row['kl']:6.2f}")
    print(json.dumps(record["reward_model"], indent=2))
    print(f"{out / 'experiment.csv'}\n{out / 'experiment.png'}\ntotal {record['total_s']:.0f} s")


if __name__ == "__main__":
    main()
