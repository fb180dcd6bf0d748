"""PPO in the framework (`algorithm=ppo`, online/ppo.py): the rollout layout, the policy-and-value forward, one
Lightning step of rollouts and minibatch updates, the KL controller, a failing labeller, the command end to end
and its config checks. The pure pieces (rewards, GAE, losses, controllers) are checked in tests/losses/test_ppo.py.
"""

from __future__ import annotations

import copy
import math

import lightning as L
import pytest
import torch
from helpers import ADAMW, DPO, EOS, MODEL, PAD, random_pairs, read_summary, run_in_process, train
from safetensors.torch import load_file
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM

from dpo_lightning.cli import train as train_command
from dpo_lightning.data.collate import collate_packed, collate_padded
from dpo_lightning.data.prompts import Prompts
from dpo_lightning.data.tokenize import TokenizedRanking
from dpo_lightning.errors import RunError
from dpo_lightning.eval.labellers import RewardLabeller
from dpo_lightning.eval.rewards import Reward
from dpo_lightning.eval.sampling import SamplingSettings, completion_text, sample_completions, truncated
from dpo_lightning.models.loading import load_tokenizer
from dpo_lightning.models.logprobs import token_logprobs
from dpo_lightning.online.ppo import PPOModule, as_rows
from dpo_lightning.online.settings import PPOSettings
from dpo_lightning.training.module import DPOLitModule

TOKENIZER = load_tokenizer({"name_or_path": None, "init_from": None, "pad_token": None})
SAMPLING = SamplingSettings(max_new_tokens=6, seed=11)
PROMPTS = [pair.prompt_ids for pair in random_pairs(10, seed=9)]
PER_ROLLOUT = 5  # prompts per Lightning step: with mini_batch_size 2, minibatches of 2, 2 and 1


class TokenSum(Reward):
    """A deterministic reward the tiny random model's samples rarely tie on: Σ code points mod 97."""

    def __call__(self, prompts, completions):
        return [float(sum(map(ord, c)) % 97) for c in completions]


def _module(labeller_reward: Reward | None = None, **settings) -> PPOModule:
    return PPOModule(
        settings=PPOSettings(**{"ppo_epochs": 2, "mini_batch_size": 2, **settings}),
        sampling=SAMPLING,
        labeller=RewardLabeller(labeller_reward or TokenSum()),
        tokenizer=TOKENIZER,
        model=MODEL,
        optimizer=ADAMW,
    )


class _Recorder(L.Callback):
    """Per Lightning step: the policy as it was before it (a copy), and the logged metrics and global step after."""

    def __init__(self) -> None:
        self.policies: list[torch.nn.Module] = []
        self.metrics: list[dict[str, float]] = []
        self.steps: list[int] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.policies.append(copy.deepcopy(module.policy))

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.metrics.append({name: float(value) for name, value in trainer.callback_metrics.items()})
        self.steps.append(trainer.global_step)


def _fit(module: PPOModule, tmp_path, rollouts: int) -> _Recorder:
    """`rollouts` Lightning steps of PER_ROLLOUT prompts each, in order; max_steps never stops them."""
    recorder = _Recorder()
    trainer = L.Trainer(
        max_epochs=1, max_steps=-1, limit_train_batches=rollouts, accelerator="cpu", logger=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path, limit_val_batches=0,
        enable_checkpointing=False, callbacks=[recorder],
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=DataLoader(PROMPTS, batch_size=PER_ROLLOUT, collate_fn=Prompts))
    assert recorder.steps[-1] == trainer.global_step
    return recorder


def _initial_policy() -> torch.nn.Module:
    initial = DPOLitModule(model=MODEL, loss=DPO)
    initial.configure_model()
    return initial.policy


# --- the rollout layout and the forward -------------------------------------------------------------------------

RESPONSES = [[5, 6, 7], [8], [9, 10, 11, 12, 13], [14, 15]]  # ragged one-response rankings
RANKING_PROMPTS = [[20, 21], [22, 23, 24], [25], [26, 27, 28, 29]]


def _rankings() -> list[TokenizedRanking]:
    return [TokenizedRanking(p, [r], [0]) for p, r in zip(RANKING_PROMPTS, RESPONSES, strict=True)]


def test_as_rows_lays_a_packed_batch_of_ragged_responses_out_as_right_padded_rows():
    batch = collate_packed(_rankings(), PAD, max_tokens=9)  # rows hold several examples
    assert batch.input_ids.shape[0] < len(RESPONSES)  # packed: examples share rows
    flat = torch.arange(1, batch.target_ids.numel() + 1, dtype=torch.float32)  # [N] = 11 tokens, numbered
    rows, mask = as_rows(flat, batch)
    expected = torch.tensor(
        [[1, 2, 3, 0, 0], [4, 0, 0, 0, 0], [5, 6, 7, 8, 9], [10, 11, 0, 0, 0]], dtype=torch.float32
    )  # [S, T] by hand: each response's tokens in order, 0 on padding
    assert torch.equal(rows, expected) and rows.dtype == torch.float32
    assert torch.equal(mask, expected > 0)
    ids, id_mask = as_rows(batch.target_ids, batch)  # the response tokens themselves land where they belong
    assert torch.equal(id_mask, mask)
    assert [ids[s, : len(r)].tolist() for s, r in enumerate(RESPONSES)] == RESPONSES
    assert ids[~mask].eq(0).all()


def test_outputs_are_the_policys_token_logprobs_and_the_value_head_on_its_hidden_states():
    module = _module()
    module.configure_model()
    batch = collate_packed(_rankings(), PAD)
    with torch.no_grad():
        logps, values, entropy = module.outputs(batch)
        padded = token_logprobs(module.policy, collate_padded(_rankings(), PAD))  # another layout, same N tokens
    torch.testing.assert_close(logps, padded, rtol=1e-5, atol=1e-5)
    assert torch.equal(values, torch.zeros(len(logps)))  # the zero-initialised value head
    torch.manual_seed(0)
    torch.nn.init.normal_(module.value_head.weight)
    torch.nn.init.normal_(module.value_head.bias)
    with torch.no_grad():
        logps, values, entropy = module.outputs(batch)
        expected_values, expected_logps, expected_entropy = [], [], []
        for prompt, response in zip(RANKING_PROMPTS, RESPONSES, strict=True):  # each sequence alone, unpadded
            ids = torch.tensor([prompt + response])
            hidden = module.policy.get_decoder()(input_ids=ids).last_hidden_state[0]  # [L, H]
            logits = module.policy(input_ids=ids).logits[0].log_softmax(-1)  # [L, V]
            generating = range(len(prompt) - 1, len(prompt) + len(response) - 1)  # the states that generate y
            expected_values += [module.value_head.weight[0] @ hidden[t] + module.value_head.bias[0] for t in generating]
            expected_logps += [logits[t, token] for t, token in zip(generating, response, strict=True)]
            expected_entropy += [-(logits[t].exp() * logits[t]).sum() for t in generating]
    torch.testing.assert_close(values, torch.stack(expected_values), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logps, torch.stack(expected_logps), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(entropy, torch.stack(expected_entropy), rtol=1e-5, atol=1e-5)
    assert values.requires_grad is False and values.abs().min() > 0  # the head was read, not zeros


# --- Lightning steps ----------------------------------------------------------------------------------------------

LOGGED = ("train/reward", "train/kl", "train/kl_coef", "train/clip_fraction", "train/approx_kl", "train/value_loss",
          "train/explained_variance", "train/entropy", "train/policy_loss")  # fmt: skip


@pytest.mark.parametrize("missing_eos_penalty", [None, 1.5], ids=["no-penalty", "eos-penalty"])
def test_each_step_is_one_rollout_and_ppo_epochs_of_minibatch_updates(missing_eos_penalty, tmp_path):
    module = _module(missing_eos_penalty=missing_eos_penalty)
    collated: list[list[TokenizedRanking]] = []  # what each forward was laid out from: the rollout, then minibatches
    collate = module.collate
    module.collate = lambda responses: collated.append(list(responses)) or collate(responses)
    recorder = _fit(module, tmp_path, rollouts=2)

    per_rollout = 2 * math.ceil(PER_ROLLOUT / 2)  # ppo_epochs × ⌈B / mini_batch_size⌉ = 2 × 3
    assert recorder.steps == [per_rollout, 2 * per_rollout]
    assert module.rollouts_done == 2
    assert module.rollout_counts["prompts"] == module.rollout_counts["samples"] == 2 * PER_ROLLOUT
    assert len(collated) == 2 * (1 + per_rollout)
    for rollout in range(2):  # each epoch's minibatches partition the rollout
        whole, *minibatches = collated[rollout * (1 + per_rollout) : (rollout + 1) * (1 + per_rollout)]
        key = lambda r: (tuple(r.prompt_ids), tuple(r.response_ids[0]))  # noqa: E731
        assert len(whole) == PER_ROLLOUT
        for epoch in (minibatches[:3], minibatches[3:]):
            assert sorted(len(part) for part in epoch) == [1, 2, 2]
            assert sorted(key(r) for part in epoch for r in part) == sorted(key(r) for r in whole)

    initial = _initial_policy()
    with module.reference_model() as reference:  # the reference is the start, bit for bit
        for (name, weights), start in zip(reference.state_dict().items(), initial.state_dict().values(), strict=True):
            assert torch.equal(weights, start), name
    assert not all(torch.equal(a, b) for a, b in zip(module.policy.parameters(), initial.parameters(), strict=True))
    assert module.value_head.weight.abs().sum() > 0 and module.value_head.bias.abs() > 0  # it learnt from zero

    for rollout, (policy, metrics) in enumerate(zip(recorder.policies, recorder.metrics, strict=True)):
        assert all(math.isfinite(metrics[name]) for name in LOGGED), metrics
        assert 0 <= metrics["train/clip_fraction"] <= 1 and metrics["train/entropy"] > 0
        assert metrics["train/kl_coef"] == pytest.approx(0.05)  # fixed KL
        assert metrics["train/value_loss"] > 0 and metrics["train/response_tokens"] > 0
        prompts = PROMPTS[rollout * PER_ROLLOUT : (rollout + 1) * PER_ROLLOUT]
        samples = sample_completions(policy, prompts, TOKENIZER, SAMPLING, seed_offset=rollout)  # draw `rollout`
        texts = [completion_text(TOKENIZER, p, s) for p, s in zip(prompts, samples, strict=True)]
        scores = TokenSum()([p for p, _ in texts], [c for _, c in texts])
        if missing_eos_penalty is not None:
            scores = [score - missing_eos_penalty * truncated(s, EOS) for score, s in zip(scores, samples, strict=True)]
        assert metrics["train/reward"] == pytest.approx(sum(scores) / len(scores), abs=1e-5), f"rollout {rollout}"
    assert recorder.metrics[0]["train/kl"] == pytest.approx(0.0, abs=1e-5)  # rollout 0: π is still π_ref
    assert recorder.metrics[1]["train/kl"] != 0.0


@pytest.mark.parametrize("target_kl", [1000.0, 0.05], ids=["large-target", "small-target"])
def test_the_adaptive_kl_coefficient_moves_towards_the_target(target_kl, tmp_path):
    """β_KL after each rollout moves in the direction of (measured KL − target): down when below, up when above."""
    module = _module(adaptive_kl=True, kl_coef=0.05, target_kl=target_kl, kl_horizon=20)
    recorder = _fit(module, tmp_path, rollouts=2)
    coefficients = [0.05, *(metrics["train/kl_coef"] for metrics in recorder.metrics)]
    for rollout, metrics in enumerate(recorder.metrics):
        moved, error = coefficients[rollout + 1] - coefficients[rollout], metrics["train/kl"] - target_kl
        assert moved != 0 and (moved > 0) == (error > 0), (rollout, metrics["train/kl"], coefficients)
    assert recorder.metrics[0]["train/kl"] == pytest.approx(0.0, abs=1e-6)  # rollout 0: π = π_ref, below any target
    if target_kl > 1:  # down after both rollouts
        assert coefficients[2] < coefficients[1] < coefficients[0], coefficients
    else:  # down, then up once the policy has moved more than the target away (measured: 0.11 nats)
        assert recorder.metrics[1]["train/kl"] > target_kl and coefficients[0] > coefficients[1] < coefficients[2]


class FailsOn(Reward):
    """TokenSum, but NaN for one prompt."""

    def __init__(self, prompt: str) -> None:
        self.prompt = prompt

    def __call__(self, prompts, completions):
        return [math.nan if p == self.prompt else float(len(c)) for p, c in zip(prompts, completions, strict=True)]


def test_a_sample_the_labeller_cannot_score_stops_the_run_naming_its_prompt(tmp_path):
    failing = TOKENIZER.decode(PROMPTS[PER_ROLLOUT + 2], skip_special_tokens=True)  # in the second rollout
    module = _module(FailsOn(failing))
    with pytest.raises(RunError) as raised:
        _fit(module, tmp_path, rollouts=2)
    assert str(raised.value) == f"rollout 1: the labeller could not score a sample of {failing!r} (non-finite reward)"
    assert module.rollouts_done == 1


# --- the command ----------------------------------------------------------------------------------------------------

PPO = ["algorithm=ppo", "task.source.num_train_pairs=64", "task.source.num_val_pairs=16", "data.batch_size=8",
       "algorithm.mini_batch_size=4", "algorithm.ppo_epochs=1", "algorithm.sampling.max_new_tokens=8",
       "samples.num_prompts=4", "samples.max_new_tokens=8", "trainer.max_steps=4",
       "trainer.enable_progress_bar=false"]  # fmt: skip


def test_the_ppo_command_trains_reports_and_exports_a_loadable_policy(tmp_path):
    result = train(*PPO, run_dir=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = read_summary(tmp_path)
    assert summary["status"] == "completed" and summary["global_step"] == 4
    counts = summary["rollouts"]["counts"]  # 4 optimizer steps = 2 rollouts (1 epoch × 8 / 4 minibatches) of 8
    assert counts["prompts"] == counts["samples"] == 2 * 8
    metrics = summary["metrics"]
    assert {"val/reward", "val/kl", "train/reward", "train/kl", "train/value_loss"} <= set(metrics)
    assert metrics["train/kl_coef"] == pytest.approx(0.05)  # ppo.yaml's fixed β_KL
    assert all(math.isfinite(metrics[name]) for name in LOGGED)
    model, info = AutoModelForCausalLM.from_pretrained(tmp_path / "policy", output_loading_info=True)
    assert not any(info.values()), info  # nothing missing or unexpected: the value head is not exported
    assert not any("value_head" in name for name in load_file(tmp_path / "policy" / "model.safetensors"))
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=torch.tensor([[5, 6, 7]])).logits).all()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["reference=precomputed"],
            "error: reference: PPO's KL penalty needs log π_ref of its own samples: use reference=model, lora or sync",
        ),
        (
            ["reference=none"],
            "error: reference: PPO's KL penalty needs log π_ref of its own samples: use reference=model, lora or sync",
        ),
        (
            ["labeller@algorithm.labeller=judge", "algorithm.labeller.judge.model=m"],
            "error: algorithm.labeller: PPO needs an absolute reward r(x, y): labeller@algorithm.labeller=reward "
            "(PPO-GT) or reward_model (PPO)",
        ),
        (["algorithm.ppo_epochs=0"], "error: algorithm.ppo_epochs: must be an integer ≥ 1, got 0"),
        (["algorithm.lam=2"], "error: algorithm.lam: must be in [0, 1], got 2"),
        (
            ["trainer=fsdp"],
            "error: trainer: algorithm=ppo does not shard its value head: use trainer=default, cpu, gpu or ddp",
        ),
        (
            ["algorithm.adaptive_kl=true", "algorithm.kl_coef=0"],
            "error: algorithm.kl_coef: must be > 0 with algorithm.adaptive_kl=true (the controller scales it), got 0",
        ),
        (
            ["trainer.accumulate_grad_batches=2"],
            "error: trainer.accumulate_grad_batches: algorithm=ppo steps its optimizer itself "
            "(algorithm.mini_batch_size responses a step): set it to 1",
        ),
    ],
    ids=["precomputed", "no-reference", "judge", "ppo-epochs", "lam", "fsdp", "adaptive-zero-coef", "accumulate"],
)
def test_ppo_config_mistakes_fail_in_one_line(overrides, message, tmp_path):
    result = run_in_process(train_command.main, "algorithm=ppo", *overrides, f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == message
