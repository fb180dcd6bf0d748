"""The DPO paper's Figure 2, complete and offline: DPO against PPO, PPO-GT and the baselines on the sentiment task.

    python scripts/figure2.py [--out outputs/figure2] [--seeds 0 1] [--quick]

    1. SFT, pairs, reward model   as scripts/on_policy_experiment.py: the tiny model's SFT run, 2 samples per prompt
                                  labelled by VADER (`cli.pairs`), a Bradley–Terry reward model on those pairs
    2. DPO           β ∈ {0.05, 0.1, 0.5, 1}, every seed        task=local (the SFT pairs) loss=dpo
    3. PPO-GT        β_KL ∈ {0.02, 0.1, 0.5}, every seed        algorithm=ppo, the true reward (VADER) as r(x, y)
    4. PPO           β_KL ∈ {0.02, 0.1, 0.5}, the first seed    algorithm=ppo labeller=reward_model (the paper's PPO)
    5. Preferred-FT, Unlikelihood                               the same pairs, the first seed
    6. Best-of-N     N ∈ {1, 2, 4, 16, 64}                      the reward model picks (the paper's), and VADER
    7. evaluation    every final policy: VADER reward and KL(π ‖ π_SFT) of one sample on each of the same 256
                     validation prompts (`eval.policy_eval.reward_and_kl`); per seed, and the mean over seeds
    8. win rates     each method at its best setting (highest mean reward) against the SFT model's samples on the
                     same prompts, judged by the task reward (a tie counts half) — the TL;DR-style view

Every trained method starts from the SFT model with the same learning rate (1e-4), batch (32 pairs or prompts) and
response length (32 tokens); DPO and the baselines take 128 optimizer steps, PPO 40 rollouts of 32 prompts
(160 optimizer steps: 2 epochs × 2 minibatches a rollout). Every step is an ordinary command of the project
(printed before it runs); a step whose output exists is skipped. Writes figure2.csv (every point), figure2.json
(points, win rates, reward-model accuracy, wall-clock) and figure2.png into --out. `--quick` is the reduced version
a test runs (not a result).
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
from on_policy_experiment import (  # noqa: E402
    FULL,
    QUICK,
    SAMPLING,
    SECOND_STAGE,
    evaluation_prompts,
    first_stage,
    run_best_of_n,
    train,
)

from dpo_lightning.eval.frontier import FrontierPoint, plot_frontier  # noqa: E402
from dpo_lightning.eval.policy_eval import reward_and_kl  # noqa: E402
from dpo_lightning.eval.rewards import VaderReward  # noqa: E402
from dpo_lightning.eval.sampling import completion_text, sample_completions  # noqa: E402
from dpo_lightning.models.loading import build_model, load_tokenizer, model_config  # noqa: E402

BETAS = (0.05, 0.1, 0.5, 1.0)
KL_COEFS = (0.02, 0.1, 0.5)
STEPS = ["trainer.max_steps=128"]
PPO = ["algorithm=ppo", "algorithm.mini_batch_size=16", "algorithm.ppo_epochs=2",
       "algorithm.sampling.max_new_tokens=32", "trainer.max_steps=160"]  # fmt: skip
QUICK_STEPS = ["trainer.max_steps=4"]
QUICK_PPO = [*PPO[:-1], "trainer.max_steps=4"]


def policy_of(folder: Path) -> torch.nn.Module:
    return build_model(model_config(str(folder / "policy")))


def win_rate(
    policy: torch.nn.Module, sft_rewards: list[float], prompts: list[list[int]], tokenizer
) -> tuple[float, float]:
    """Share of prompts where the policy's sample beats the SFT sample by VADER (a tie: half), ± standard error."""
    samples = sample_completions(policy, prompts, tokenizer, SAMPLING)
    texts = [completion_text(tokenizer, p, s) for p, s in zip(prompts, samples, strict=True)]
    rewards = VaderReward()([p for p, _ in texts], [c for _, c in texts])
    wins = [1.0 if r > s else 0.5 if r == s else 0.0 for r, s in zip(rewards, sft_rewards, strict=True)]
    mean = statistics.mean(wins)
    return mean, (statistics.stdev(wins) / math.sqrt(len(wins)) if len(wins) > 1 else 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "figure2", help="output folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds of DPO and PPO-GT (≥ 2)")
    parser.add_argument("--quick", action="store_true", help="the reduced version (tests)")
    args = parser.parse_args()
    plan, out, started = (QUICK if args.quick else FULL), args.out.resolve(), time.perf_counter()
    steps, ppo = (QUICK_STEPS, QUICK_PPO) if args.quick else (STEPS, PPO)

    sft, on_pairs, rm = first_stage(out, plan)
    on_pairs = [*on_pairs, "reward@task.reward=vader"]  # val/reward of the offline runs' samples
    start = [f"model.init_from={sft}", *SECOND_STAGE]
    ppo_data = plan["online"][1:] if args.quick else []  # the quick run's small task

    runs: dict[tuple[str, str], list[Path]] = {}  # (series, setting) → one run folder per seed
    for seed in args.seeds:
        for beta in BETAS:
            folder = train(
                f"dpo/beta_{beta}/seed_{seed}",
                out,
                [*start, *on_pairs, "loss=dpo", f"beta={beta}", *steps, f"seed={seed}"],
            )
            runs.setdefault(("DPO", f"β={beta}"), []).append(folder)
        for coef in KL_COEFS:
            folder = train(
                f"ppo_gt/kl_{coef}/seed_{seed}",
                out,
                [*start, *ppo, *ppo_data, f"algorithm.kl_coef={coef}", f"seed={seed}"],
            )
            runs.setdefault(("PPO-GT", f"β_KL={coef}"), []).append(folder)
    first = args.seeds[0]
    for coef in KL_COEFS:
        overrides = [*start, *ppo, *ppo_data, f"algorithm.kl_coef={coef}", "labeller@algorithm.labeller=reward_model",
                     f"algorithm.labeller.reward.name_or_path={rm / 'policy'}", f"seed={first}"]  # fmt: skip
        runs[("PPO", f"β_KL={coef}")] = [train(f"ppo/kl_{coef}/seed_{first}", out, overrides)]
    for loss, name in (("preferred_ft", "Preferred-FT"), ("unlikelihood", "Unlikelihood")):
        runs[(name, "")] = [
            train(f"{loss}/seed_{first}", out, [*start, *on_pairs, f"loss={loss}", *steps, f"seed={first}"])
        ]

    best_of_n = run_best_of_n(out, plan, sft, rm / "policy")

    prompts = evaluation_prompts(plan["evaluation_prompts"])
    tokenizer, reference = load_tokenizer(model_config(str(sft / "policy"))), policy_of(sft)
    vader = VaderReward()
    sft_point = reward_and_kl(reference, reference, prompts, tokenizer, SAMPLING, vader)
    rows = [{"series": "SFT", "setting": "", "seed": "", "reward": sft_point.reward, "reward_se": sft_point.reward_se,
             "kl": 0.0, "kl_se": 0.0}]  # fmt: skip
    points = [FrontierPoint("sft", "SFT", None, None, sft_point.reward, sft_point.reward_se, 0.0, 0.0, "completed")]
    means: dict[tuple[str, str], dict[str, float]] = {}
    for (series, setting), folders in runs.items():
        seed_points = []
        for seed, folder in zip(args.seeds if len(folders) > 1 else [first], folders, strict=True):
            point = reward_and_kl(policy_of(folder), reference, prompts, tokenizer, SAMPLING, vader)
            seed_points.append(point)
            rows.append({"series": series, "setting": setting, "seed": seed, "reward": point.reward,
                         "reward_se": point.reward_se, "kl": point.kl, "kl_se": point.kl_se})  # fmt: skip
        rewards, kls = [p.reward for p in seed_points], [p.kl for p in seed_points]
        many = len(seed_points) > 1
        mean = {
            "reward": statistics.mean(rewards),
            "reward_se": statistics.stdev(rewards) / math.sqrt(len(rewards)) if many else seed_points[0].reward_se,
            "kl": statistics.mean(kls),
            "kl_se": statistics.stdev(kls) / math.sqrt(len(kls)) if many else seed_points[0].kl_se,
        }
        means[(series, setting)] = mean
        rows.append({"series": series, "setting": setting, "seed": "mean", **mean})
        points.append(FrontierPoint(f"{series} {setting}", series, None, None, mean["reward"], mean["reward_se"],
                                    mean["kl"], mean["kl_se"], "completed"))  # fmt: skip
    for labeller, bon_rows in best_of_n.items():
        for row in bon_rows:
            series = f"Best-of-N ({labeller})"
            rows.append({"series": series, "setting": f"N={row['n']}", "seed": "", "reward": float(row["reward"]),
                         "reward_se": float(row["reward_se"]), "kl": float(row["kl"]), "kl_se": ""})  # fmt: skip
            points.append(FrontierPoint(f"N={row['n']}", series, None, int(row["n"]), float(row["reward"]),
                                        float(row["reward_se"]), float(row["kl"]), None, "completed"))  # fmt: skip

    sft_samples = sample_completions(reference, prompts, tokenizer, SAMPLING)
    sft_texts = [completion_text(tokenizer, p, s) for p, s in zip(prompts, sft_samples, strict=True)]
    sft_rewards = vader([p for p, _ in sft_texts], [c for _, c in sft_texts])
    win_rates = {}
    for series in dict.fromkeys(series for series, _ in runs):
        setting = max((s for (name, s) in means if name == series), key=lambda s: means[(series, s)]["reward"])
        folder = runs[(series, setting)][0]
        rate, rate_se = win_rate(policy_of(folder), sft_rewards, prompts, tokenizer)
        win_rates[series] = {"setting": setting, "win_rate": rate, "win_rate_se": rate_se, **means[(series, setting)]}

    out.mkdir(parents=True, exist_ok=True)
    with (out / "figure2.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=["series", "setting", "seed", "reward", "reward_se", "kl", "kl_se"])
        writer.writeheader()
        writer.writerows(rows)
    record = {
        "rows": rows,
        "win_rates_vs_sft": win_rates,
        "reward_model_held_out_accuracy": json.loads((rm / "summary.json").read_text())["metrics"].get("val/accuracy"),
        "settings": {
            "seeds": args.seeds,
            "quick": args.quick,
            "command": "python scripts/figure2.py" + (" --quick" if args.quick else ""),
        },
        "total_s": round(time.perf_counter() - started, 1),
    }
    (out / "figure2.json").write_text(json.dumps(record, indent=2) + "\n")
    title = "Sentiment (offline): DPO, PPO, PPO-GT, baselines, Best-of-N from one SFT model"
    plot_frontier(points, title).savefig(out / "figure2.png", dpi=150)
    for row in rows:
        where = f"{row['series']:<26} {row['setting']:>10} {row['seed']!s:>5}"
        print(f"{where}  reward {row['reward']:.3f}  KL {row['kl']:.2f}")
    for series, rate in win_rates.items():
        print(f"win rate vs SFT  {series:<14} ({rate['setting']}): {rate['win_rate']:.3f} ± {rate['win_rate_se']:.3f}")
    print(f"{out / 'figure2.csv'}\n{out / 'figure2.png'}\ntotal {record['total_s']:.0f} s")


if __name__ == "__main__":
    main()
