"""Sampling for evaluation: batched left-padded generation, sample log-probs, KL estimate, the sample table."""

import csv
import math
from types import SimpleNamespace

import pytest
import torch
from helpers import ADAMW, DPO, MODEL

from dpo_lightning.data.tokenize import TokenizedPair
from dpo_lightning.eval.callback import SampleEvaluation
from dpo_lightning.eval.kl import kl_estimate, mean_and_standard_error
from dpo_lightning.eval.rewards import VaderReward, sentiment_reward
from dpo_lightning.eval.sampling import SamplingSettings, completion_text, sample_completions, truncated
from dpo_lightning.models.loading import build_model
from dpo_lightning.models.tiny_tokenizer import load_tiny_tokenizer
from dpo_lightning.training.module import KL_REFERENCE_PREFIX, REFERENCE_PREFIX, DPOLitModule

TOKENIZER = load_tiny_tokenizer()
# The test model on the shipped tokenizer's vocabulary, so that samples decode to text.
TEXT_MODEL = {**MODEL, "config": {**MODEL["config"], "vocab_size": 1024, "bos_token_id": 0}}
PROMPTS = [
    "I watched the film last night and the acting was",
    "The plot is",
    "Two hours later, I can say that the soundtrack of this long movie was",
]


def _prompt_ids() -> list[list[int]]:
    return [TOKENIZER(text, add_special_tokens=False)["input_ids"] for text in PROMPTS]


def _sequence_logp_float64(model, prompt: list[int], completion: list[int]) -> float:
    """Σ log p(completion | prompt) from one unpadded forward, log-softmax in float64."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + completion])).logits[0].double()  # [T, V]
    logps = logits.log_softmax(-1)
    return sum(float(logps[len(prompt) - 1 + i, token]) for i, token in enumerate(completion))


def test_batched_left_padded_greedy_generation_equals_one_prompt_at_a_time():
    model = build_model(TEXT_MODEL).eval()
    settings = SamplingSettings(max_new_tokens=12, temperature=0.0, batch_size=3)
    batched = sample_completions(model, _prompt_ids(), TOKENIZER, settings)
    for prompt, completion in zip(_prompt_ids(), batched, strict=True):
        with torch.no_grad():
            alone = model.generate(
                torch.tensor([prompt]), do_sample=False, max_new_tokens=12, pad_token_id=TOKENIZER.pad_token_id
            )[0, len(prompt) :].tolist()
        eos = TOKENIZER.eos_token_id
        assert completion == (alone[: alone.index(eos) + 1] if eos in alone else alone)
        assert 1 <= len(completion) <= 12


def test_sampling_is_seeded_and_restores_the_global_rng_and_training_mode():
    model = build_model(TEXT_MODEL).train()
    settings = SamplingSettings(max_new_tokens=10, batch_size=2, seed=5)
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    first = sample_completions(model, _prompt_ids(), TOKENIZER, settings)
    assert torch.equal(torch.random.get_rng_state(), state) and model.training
    assert sample_completions(model, _prompt_ids(), TOKENIZER, settings) == first
    assert sample_completions(model, _prompt_ids(), TOKENIZER, SamplingSettings(10, batch_size=2, seed=6)) != first


# Settings a hub model's generation_config may carry, each of which changes what `generate` samples.
HOSTILE_GENERATION_CONFIG = {
    "repetition_penalty": 1.3,
    "no_repeat_ngram_size": 1,
    "min_new_tokens": 8,
    "suppress_tokens": [7, 8, 9],
    "begin_suppress_tokens": [10],
    "bad_words_ids": [[11], [12]],
    "min_p": 0.05,
    "typical_p": 0.5,
    "top_k": 3,
    "epsilon_cutoff": 3e-4,
    "sequence_bias": {(13,): 5.0},
    "renormalize_logits": True,
    "max_length": 4,
}


def _hostile(model):
    for key, value in HOSTILE_GENERATION_CONFIG.items():
        setattr(model.generation_config, key, value)
    return model


@pytest.mark.parametrize("temperature", [1.0, 0.0], ids=["sampled", "greedy"])
def test_samples_ignore_the_models_own_generation_config(temperature):
    """The samples are of π: settings in the model's generation_config change neither the samples nor their
    log-probs, and the model's config is left as it was."""
    settings = SamplingSettings(max_new_tokens=12, temperature=temperature, batch_size=8, seed=3)
    prompts = _prompt_ids() * 4
    clean = build_model(TEXT_MODEL).eval()
    hostile = _hostile(build_model(TEXT_MODEL).eval())
    expected = sample_completions(clean, prompts, TOKENIZER, settings)
    samples = sample_completions(hostile, prompts, TOKENIZER, settings)
    assert samples == expected
    logps = [_sequence_logp_float64(hostile, p, s) for p, s in zip(prompts, samples, strict=True)]
    assert logps == pytest.approx([_sequence_logp_float64(clean, p, s) for p, s in zip(prompts, expected, strict=True)])
    assert {k: getattr(hostile.generation_config, k) for k in HOSTILE_GENERATION_CONFIG} == HOSTILE_GENERATION_CONFIG


def test_samples_of_a_peft_wrapped_policy_ignore_the_base_models_generation_config():
    from peft import LoraConfig, get_peft_model

    settings = SamplingSettings(max_new_tokens=12, batch_size=8, seed=1)
    lora = LoraConfig(r=2, target_modules=["q_proj", "v_proj"])
    clean = get_peft_model(build_model(TEXT_MODEL), lora).eval()
    hostile = get_peft_model(_hostile(build_model(TEXT_MODEL)), lora).eval()
    prompts = _prompt_ids() * 4
    assert sample_completions(hostile, prompts, TOKENIZER, settings) == sample_completions(
        clean, prompts, TOKENIZER, settings
    )


def test_a_completion_is_truncated_when_it_ends_without_eos():
    eos = TOKENIZER.eos_token_id
    assert truncated([5, 6, 7], eos) and not truncated([5, eos], eos) and not truncated([eos], eos)
    model = build_model(TEXT_MODEL).eval()
    samples = sample_completions(model, _prompt_ids() * 4, TOKENIZER, SamplingSettings(max_new_tokens=3, seed=2))
    assert all(truncated(s, eos) == (len(s) == 3 and eos not in s) for s in samples)


def test_completion_text_keeps_the_space_between_prompt_and_completion():
    prompt = TOKENIZER(" the ending was", add_special_tokens=False)["input_ids"]
    completion = TOKENIZER(" truly wonderful.", add_special_tokens=False)["input_ids"] + [TOKENIZER.eos_token_id]
    assert completion_text(TOKENIZER, prompt, completion) == (" the ending was", " truly wonderful.")


def test_kl_estimate_is_the_mean_log_ratio_with_its_standard_error():
    policy, reference = torch.tensor([-3.0, -5.0, -2.5, -7.0]), torch.tensor([-4.0, -4.0, -3.5, -9.0])
    ratios = [1.0, -1.0, 1.0, 2.0]
    mean = sum(ratios) / 4
    std = math.sqrt(sum((r - mean) ** 2 for r in ratios) / 3)
    assert kl_estimate(policy, reference) == pytest.approx((mean, std / 2))
    assert mean_and_standard_error(torch.tensor([2.0])) == (2.0, 0.0)


def _evaluation(module, count=3, kl=True, reward=True):
    callback = SampleEvaluation(
        count, TOKENIZER, SamplingSettings(max_new_tokens=10, batch_size=2), VaderReward() if reward else None, None, kl
    )
    ids = _prompt_ids()
    callback.prompts = [TokenizedPair(p, [5, TOKENIZER.eos_token_id], [6, TOKENIZER.eos_token_id]) for p in ids]
    return callback, callback._my_rows(SimpleNamespace(global_rank=0, world_size=1), module)


@pytest.mark.parametrize("loss", [DPO, {"_target_": "dpo_lightning.losses.sft.SFT"}], ids=["dpo", "sft"])
def test_sample_rows_hold_rewards_and_log_probs_of_the_policy_samples_under_both_models(loss):
    module = DPOLitModule(model=TEXT_MODEL, loss=loss, optimizer=ADAMW, kl_reference=True)
    module.configure_model()
    assert (module.reference is None) == (loss is not DPO)
    assert (module.kl_reference is None) == (loss is DPO)  # a copy only where no reference model exists
    with torch.no_grad():  # move the policy away from the reference
        for parameter in module.policy.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    callback, rows = _evaluation(module)
    settings = callback.settings
    samples = sample_completions(module.policy, _prompt_ids(), TOKENIZER, settings)
    reference = build_model(TEXT_MODEL).eval()  # the initial policy, built independently
    reference_samples = sample_completions(reference, _prompt_ids(), TOKENIZER, settings)
    for row, prompt, sample, reference_sample in zip(rows, _prompt_ids(), samples, reference_samples, strict=True):
        prompt_text, text = completion_text(TOKENIZER, prompt, sample)
        assert (row["prompt"], row["policy"], row["policy_tokens"]) == (prompt_text, text, len(sample))
        assert row["reference"] == completion_text(TOKENIZER, prompt, reference_sample)[1]
        assert row["policy_logp"] == pytest.approx(_sequence_logp_float64(module.policy, prompt, sample), abs=1e-4)
        assert row["reference_logp"] == pytest.approx(_sequence_logp_float64(reference, prompt, sample), abs=1e-4)
        assert row["policy_reward"] == pytest.approx(sentiment_reward(prompt_text, text))
        assert row["chosen"] == completion_text(TOKENIZER, prompt, [5, TOKENIZER.eos_token_id])[1]
        assert row["policy_truncated"] == int(sample[-1] != TOKENIZER.eos_token_id)
    metrics = callback._metrics(rows, 0)
    assert metrics["val/truncated_samples"] == sum(row["policy_truncated"] for row in rows) / len(rows)
    ratios = torch.tensor([row["policy_logp"] - row["reference_logp"] for row in rows])
    assert metrics["val/kl"] == pytest.approx(float(ratios.mean())) and metrics["val/kl"] != 0
    assert metrics["val/reward"] == pytest.approx(sum(row["policy_reward"] for row in rows) / len(rows))


def test_kl_is_zero_while_the_policy_equals_the_reference():
    module = DPOLitModule(model=TEXT_MODEL, loss=DPO, optimizer=ADAMW, kl_reference=True)
    module.configure_model()
    callback, rows = _evaluation(module)
    assert callback._metrics(rows, 0)["val/kl"] == 0.0
    assert all(row["policy"] == row["reference"] for row in rows)  # same weights, same seed: same samples


def test_without_a_reference_model_and_kl_off_there_is_no_reference_column_or_kl():
    module = DPOLitModule(model=TEXT_MODEL, loss={"_target_": "dpo_lightning.losses.sft.SFT"}, optimizer=ADAMW)
    module.configure_model()
    callback, rows = _evaluation(module, kl=False, reward=False)
    assert all(row["reference"] == "" and row["reference_logp"] is None for row in rows)
    assert set(callback._metrics(rows, 0)) == {"val/sample_tokens", "val/truncated_samples", "val/step"}


def test_the_evaluation_copy_stays_out_of_checkpoints_and_the_optimizer():
    module = DPOLitModule(model=TEXT_MODEL, loss={"_target_": "dpo_lightning.losses.sft.SFT"}, optimizer=ADAMW,
                          kl_reference=True)  # fmt: skip
    module.configure_model()
    copy = {id(p) for p in module.kl_reference.parameters()}
    assert copy and not any(p.requires_grad for p in module.kl_reference.parameters())
    optimized = {id(p) for group in module.configure_optimizers()["optimizer"].param_groups for p in group["params"]}
    assert not copy & optimized
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint["state_dict"] and not any(k.startswith(KL_REFERENCE_PREFIX) for k in checkpoint["state_dict"])
    module.on_load_checkpoint(checkpoint)
    module.load_state_dict(checkpoint["state_dict"])  # strict: the copy's weights were put back
    assert not any(k.startswith(REFERENCE_PREFIX) for k in checkpoint["state_dict"])


def test_the_table_is_written_per_step(tmp_path):
    module = DPOLitModule(model=TEXT_MODEL, loss=DPO, optimizer=ADAMW)
    module.configure_model()
    callback, rows = _evaluation(module)
    callback.folder = tmp_path
    callback._write([{**row} for row in rows], SimpleNamespace(global_step=7, loggers=[]))
    with (tmp_path / "step_000007.csv").open() as file:
        written = list(csv.DictReader(file))
    assert [row["policy"] for row in written] == [row["policy"] for row in rows]
    assert [float(row["policy_reward"]) for row in written] == pytest.approx([row["policy_reward"] for row in rows])
