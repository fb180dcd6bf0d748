"""Best-of-N: the KL formula against brute-force enumeration, the picks, and the command end to end."""

from __future__ import annotations

import csv
import itertools
import json
import math
import random
from collections import Counter

import pytest
import torch
from helpers import compose, run_in_process
from omegaconf import OmegaConf

from dpo_lightning.cli import best_of_n as best_of_n_command
from dpo_lightning.eval.best_of_n import analytic_kl, best_in_groups, best_of_n_points, empirical_kl
from dpo_lightning.models.loading import build_model, load_tokenizer
from dpo_lightning.runtime.export import export_policy


def _brute_force_kl(scores: list[float], n: int) -> float:
    """KL(BoN ‖ π) of the score levels, with π uniform over `scores`: every n-tuple of draws enumerated."""
    draws = Counter(max(choice) for choice in itertools.product(scores, repeat=n))
    total = len(scores) ** n
    levels = Counter(scores)
    return sum(c / total * math.log((c / total) / (levels[s] / len(scores))) for s, c in draws.items())


@pytest.mark.parametrize(
    "scores", [[0.1, 0.7, 0.3, 0.9, 0.5, 0.2], [1.0, 1.0, 2.0, 0.0, 2.0]], ids=["distinct", "ties"]
)
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_the_empirical_kl_is_best_of_n_of_the_samples_computed_by_enumeration(scores, n):
    assert empirical_kl(scores, n) == pytest.approx(_brute_force_kl(scores, n), abs=1e-12)


@pytest.mark.parametrize("n", [2, 4, 16, 64])
def test_with_many_distinct_scores_the_kl_tends_to_log_n_minus_n_minus_1_over_n(n):
    rng = random.Random(n)
    scores = [rng.random() for _ in range(50_000)]
    assert empirical_kl(scores, n) == pytest.approx(math.log(n) - (n - 1) / n, abs=2e-3 * n)
    assert analytic_kl(n) == math.log(n) - (n - 1) / n
    coarse = [round(score, 1) for score in scores]  # 11 levels: ties make the KL smaller
    assert empirical_kl(coarse, n) < analytic_kl(n)
    assert empirical_kl([0.5] * 100, n) == 0.0  # all tied: best-of-N changes nothing


def test_the_best_of_each_group_of_n_consecutive_samples_is_kept_first_of_equals():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.5], [3.0, 3.0, 1.0, 2.0]])
    assert best_in_groups(scores, 2).tolist() == [[1, 2], [0, 3]]
    assert best_in_groups(scores, 4).tolist() == [[1], [0]]
    with pytest.raises(ValueError, match="N = 3 does not divide the 4 samples"):
        best_in_groups(scores, 3)


def test_points_report_the_true_reward_of_the_labellers_picks():
    scores = torch.tensor([[0.0, 1.0, 2.0, 3.0]])  # the labeller prefers later samples
    rewards = torch.tensor([[4.0, 3.0, 2.0, 1.0]])  # the truth prefers earlier ones: over-optimization
    one, two, four = best_of_n_points(scores.double(), rewards.double(), [1, 2, 4])
    assert one.reward == 2.5 and one.kl == 0.0 and one.picks == 4
    assert two.reward == 2.0 and two.score == 2.0 and two.picks == 2  # picks 1 and 3
    assert (
        four.reward == 1.0 and four.score == 3.0 and four.kl_measured == pytest.approx(_brute_force_kl([0, 1, 2, 3], 4))
    )


def test_the_command_writes_best_of_n_points_of_a_policy(tmp_path):
    model_config = OmegaConf.to_container(compose("policy=unused", config="best_of_n").model, resolve=True)
    folder = export_policy(build_model(model_config), load_tokenizer(model_config), tmp_path / "policy")
    arguments = [f"policy={folder}", "ns=[1,2,4]", "num_prompts=6", "sampling.max_new_tokens=8",
                 "task.source.num_train_pairs=16", "task.source.num_val_pairs=8"]  # fmt: skip
    result = run_in_process(best_of_n_command.main, *arguments, f"hydra.run.dir={tmp_path / 'out'}")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = list(csv.DictReader((tmp_path / "out" / "best_of_n.csv").open()))
    assert [int(row["n"]) for row in rows] == [1, 2, 4]
    assert [int(row["picks"]) for row in rows] == [24, 12, 6]  # 6 prompts × 4 samples, cut into groups of N
    assert all(float(row["kl"]) == pytest.approx(analytic_kl(int(row["n"]))) for row in rows)
    assert float(rows[2]["reward"]) >= float(rows[0]["reward"])  # VADER picks by VADER: the best of 4 is no worse
    record = json.loads((tmp_path / "out" / "best_of_n.json").read_text())
    assert record["prompts"] == 6 and record["samples_per_prompt"] == 4

    result = run_in_process(best_of_n_command.main, f"policy={folder}", "ns=[2,3]", f"hydra.run.dir={tmp_path / 'x'}")
    assert result.returncode == 2
    assert (
        result.stderr.strip().splitlines()[-1]
        == "error: samples_per_prompt: 3 samples per prompt are not divisible by N = [2]"
    )
