"""Online DPO end to end: each step trains on the rollout of the policy as it is at that step."""

from __future__ import annotations

from functools import partial

import lightning as L
import pytest
import torch
from helpers import ADAMW, DPO, MODEL, PAD, SMALL, random_pairs, read_summary, run_in_process, train
from torch.utils.data import DataLoader

from dpo_lightning.cli import train as train_command
from dpo_lightning.data.collate import collate_packed
from dpo_lightning.data.prompts import Prompts
from dpo_lightning.eval.labellers import RewardLabeller
from dpo_lightning.eval.rewards import Reward
from dpo_lightning.eval.sampling import SamplingSettings
from dpo_lightning.models.loading import load_tokenizer
from dpo_lightning.online.module import OnlineDPOModule
from dpo_lightning.online.rollouts import Rollouts
from dpo_lightning.training.module import DPOLitModule

TOKENIZER = load_tokenizer({"name_or_path": None, "init_from": None, "pad_token": None})


class TokenSum(Reward):
    """A reward the tiny random model's samples rarely tie on: the sum of the characters' code points mod 97."""

    def __call__(self, prompts, completions):
        return [float(sum(map(ord, c)) % 97) for c in completions]


def _rollouts() -> Rollouts:
    return Rollouts(TOKENIZER, SamplingSettings(max_new_tokens=6, seed=11), 3, RewardLabeller(TokenSum()))


PROMPTS = [pair.prompt_ids for pair in random_pairs(12, seed=9)]
STEPS, PER_STEP = 3, 4


def test_an_online_run_equals_offline_dpo_on_the_rollouts_of_the_policy_at_each_step(tmp_path):
    """The online module, trained by Lightning, against a hand-written loop: at step t, sample the rollout of the
    loop's own policy with the draw number t, collate it, take one DPO step — the weights must agree."""
    collate = partial(collate_packed, pad_token_id=PAD, ranking_pairs="best_vs_worst")
    online = OnlineDPOModule(rollouts=_rollouts(), collate=collate, model=MODEL, loss=DPO, optimizer=ADAMW)
    trainer = L.Trainer(
        max_steps=STEPS, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path, limit_val_batches=0, enable_checkpointing=False,
    )  # fmt: skip
    loader = DataLoader(PROMPTS, batch_size=PER_STEP, collate_fn=Prompts)  # in order: step t has prompts [4t, 4t+4)
    trainer.fit(online, train_dataloaders=loader)

    replay = DPOLitModule(model=MODEL, loss=DPO, optimizer=ADAMW)
    replay.configure_model()
    replay.log_dict = lambda *args, **kwargs: None  # no trainer to log to
    optimizers = replay.configure_optimizers()
    optimizer, schedule = optimizers["optimizer"], optimizers["lr_scheduler"]["scheduler"]
    rollouts, trained_on = _rollouts(), 0
    for step in range(STEPS):
        rollout = rollouts(replay.policy, PROMPTS[step * PER_STEP : (step + 1) * PER_STEP], seed_offset=step)
        trained_on += len(rollout.rankings)
        batch = collate_packed(rollout.rankings, PAD, ranking_pairs="best_vs_worst")
        replay._step(batch, "train").backward()
        optimizer.step()
        optimizer.zero_grad()
        schedule.step()
    assert trained_on > 0 and online.rollout_counts["prompts"] == STEPS * PER_STEP
    assert online.rollout_counts["samples"] == STEPS * PER_STEP * 3
    for (name, trained), replayed in zip(online.policy.named_parameters(), replay.policy.parameters(), strict=True):
        torch.testing.assert_close(trained, replayed, rtol=1e-5, atol=1e-6, msg=name)
    initial = DPOLitModule(model=MODEL, loss=DPO)
    initial.configure_model()
    assert not torch.equal(next(online.policy.parameters()), next(initial.policy.parameters()))  # it trained


ONLINE = [*SMALL, "algorithm=online", "algorithm.samples_per_prompt=3", "samples.num_prompts=8",
          "samples.max_new_tokens=12", "algorithm.sampling.max_new_tokens=12"]  # fmt: skip


@pytest.mark.parametrize(
    "overrides",
    [["loss=dpo", "data.layout=packed"], ["loss=plackett_luce", "data.layout=prefix_shared", "algorithm.pairs=all"]],
    ids=["dpo-packed", "plackett_luce-prefix_shared"],
)
def test_the_online_command_trains_on_rollouts_and_reports_what_became_of_every_sample(overrides, tmp_path):
    result = train(*ONLINE, *overrides, run_dir=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = read_summary(tmp_path)
    counts = summary["rollouts"]["counts"]
    assert counts["prompts"] == 6 * 8 and counts["samples"] == 6 * 8 * 3  # 6 steps of 8 prompts, K = 3
    metrics = summary["metrics"]
    assert metrics["train/rollout/tokens_per_s"] > 0 and -1 <= metrics["train/rollout/score"] <= 1  # VADER
    assert {"val/reward", "val/kl", "val/loss", "train/pairs_per_s"} <= set(metrics)
    assert summary["data"]["train"]["prompts"]["prompts"] == 64  # the task's 64 training prompts were read
    assert (tmp_path / "policy" / "model.safetensors").is_file()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["reference=precomputed"],
            "error: reference: precomputed caches reference log-probs of a fixed dataset; "
            "online samples are new at every step — use reference=model, lora or sync",
        ),
        (["algorithm.samples_per_prompt=1"], "error: algorithm.samples_per_prompt: must be an integer ≥ 2, got 1"),
        (
            ["algorithm.pairs=worst"],
            "error: algorithm.pairs: must be one of all, adjacent, best_vs_rest, best_vs_worst, got 'worst'",
        ),
        (
            ["algorithm.sampling.max_new_tokens=40"],
            "error: algorithm.sampling.max_new_tokens: 40 tokens do not fit "
            "the response budget task.tokenize.max_length − max_prompt_length = 64 − 32 = 32",
        ),
        (
            ["reward@task.reward=none"],
            "error: algorithm.labeller: ranks samples by the task's reward, and this task "
            "has none: set reward@task.reward=vader|classifier, or labeller@algorithm.labeller=reward_model|judge",
        ),
        (
            ["labeller@algorithm.labeller=reward_model"],
            "error: algorithm.labeller.reward.name_or_path: required but not set (give it on the command line)",
        ),
    ],
    ids=["precomputed", "one-sample", "pairs", "budget", "no-reward", "reward-model-path"],
)
def test_online_config_mistakes_fail_in_one_line(overrides, message, tmp_path):
    result = run_in_process(train_command.main, "algorithm=online", *overrides, f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == message
