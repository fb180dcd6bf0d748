"""RewardModelModule: rewards equal in every layout and equal to the exported classifier's scores of the texts, the
logged loss is the Bradley–Terry loss of its rewards, and a short run learns a preference."""

from __future__ import annotations

import math
import random

import lightning as L
import pytest
import torch
from helpers import read_summary, run_in_process, save_tiny_classifier, train
from tokenizers.processors import TemplateProcessing
from torch.utils.data import DataLoader
from transformers import AutoModelForSequenceClassification

from dpo_lightning.cli import train as train_command
from dpo_lightning.data.collate import LAYOUTS, collate_function, placeholder_batch
from dpo_lightning.data.datamodule import PreferenceDataModule
from dpo_lightning.data.tokenize import PairTokenizer, TokenizedPair, TokenizedRanking, TokenizeSettings
from dpo_lightning.eval.classifier import ClassifierScorer
from dpo_lightning.losses.bradley_terry import bradley_terry_loss
from dpo_lightning.models import sequence_rewards
from dpo_lightning.models.loading import build_model, load_tokenizer, model_config
from dpo_lightning.training.reward_model import RewardModelModule

EOS, PAD = 1, 2  # the tiny tokenizer's
QUIET = {"logger": False, "enable_progress_bar": False, "enable_model_summary": False, "enable_checkpointing": False}

# Pairs of token ids with every kind of response: ending with EOS, EOS alone, truncated (no EOS), one truncated
# token in the rejected branch (predicted from the prompt; its first token differs from the chosen one's: the
# shared layouts must fall back to the padded one), and one equal to the chosen response's first token.
PAIRS = [
    TokenizedPair([5, 6, 7], [8, 9, 10, EOS], [11, 12, EOS]),
    TokenizedPair([13, 14], [15, 16, 17, 18], [19, EOS]),  # chosen truncated
    TokenizedPair([20], [EOS], [21, 22, 23, 24, 25, EOS]),  # chosen is EOS alone: the prompt's last token scores
    TokenizedPair([26, 27, 28, 29], [30, 31, EOS], [32]),  # rejected: one truncated token, not the chosen's first
    TokenizedPair([33, 34], [35], [35, 36, EOS]),  # chosen: one truncated token (first branch)
]
RANKINGS = [
    TokenizedRanking([40, 41, 42], [[43, 44, EOS], [45], [46, 47, 48], [EOS]], [0, 1, 1, 3]),
    TokenizedRanking([49], [[50, 51, 52, EOS], [50]], [1, 0]),  # second: one truncated token equal to the first's
    TokenizedRanking([53, 54], [[55, EOS], [56, 57], [58, 59, 60, EOS]], [2, 0, 1]),
]


@pytest.fixture(scope="module")
def module() -> RewardModelModule:
    module = RewardModelModule("tiny")
    module.configure_model()
    return module.eval()


def _responses(examples) -> list[tuple[list[int], list[int]]]:
    """(prompt, response) of each sequence s, in the batch's order (pairs: chosen 0..P−1, rejected P..2P−1)."""
    if isinstance(examples[0], TokenizedPair):
        return [(p.prompt_ids, p.chosen_ids) for p in examples] + [(p.prompt_ids, p.rejected_ids) for p in examples]
    return [(r.prompt_ids, response) for r in examples for response in r.response_ids]


def _scored_ids(prompt: list[int], response: list[int]) -> list[int]:
    """What the exported classifier sees of a sequence: prompt + response without its EOS."""
    return prompt + (response[:-1] if response[-1] == EOS else response)


def _classifier_scores(model: torch.nn.Module, sequences: list[list[int]]) -> torch.Tensor:
    """[S] the classifier's own forward on the right-padded sequences (it pools the last non-pad token)."""
    width = max(map(len, sequences))
    ids = torch.tensor([s + [PAD] * (width - len(s)) for s in sequences])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences])
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits[:, 0].float()


@pytest.mark.parametrize("examples", [PAIRS, RANKINGS], ids=["pairs", "rankings"])
def test_rewards_are_the_same_in_every_layout_and_are_the_classifiers_scores(module, examples):
    expected = _classifier_scores(module.model, [_scored_ids(*pair) for pair in _responses(examples)])
    with torch.no_grad():
        for layout in LAYOUTS:
            batch = collate_function(layout, PAD)(examples)
            torch.testing.assert_close(module.rewards(batch), expected, atol=1e-5, rtol=0)
    # the test can tell positions apart: scoring at the EOS instead would give other values
    with_eos = _classifier_scores(module.model, [p + r for p, r in _responses(examples)])
    assert (with_eos - expected).abs().max() > 1e-2


def test_a_truncated_one_token_branch_falls_back_to_the_padded_layout_only_when_it_must(module, monkeypatch):
    calls = []
    to_padded = sequence_rewards.to_padded
    monkeypatch.setattr(sequence_rewards, "to_padded", lambda batch: calls.append(1) or to_padded(batch))
    shared = collate_function("prefix_shared", PAD)
    with torch.no_grad():
        module.rewards(shared([PAIRS[0], PAIRS[1], PAIRS[4]]))  # every score position in the shared rows
        module.rewards(shared([RANKINGS[1]]))
        assert calls == []
        module.rewards(shared([PAIRS[3]]))  # the rejected token's column holds the chosen response's first token
        assert calls == [1]


def test_the_tiny_reward_models_body_is_the_tiny_policys(module):
    policy = build_model(model_config("tiny")).base_model.state_dict()
    body = module.model.base_model.state_dict()
    assert policy.keys() == body.keys() and all(torch.equal(policy[k], body[k]) for k in policy)


def test_the_exported_model_scores_texts_as_the_module_rewards_them(module, tmp_path):
    tokenizer = load_tokenizer(model_config("tiny"))
    prompts = ["How was the film?", "Tell me about the book.", "Any thoughts on the song?", "How was it?"]
    chosen = [" The film was great.", " The book was a great read, honestly the best of the year.", " ok", ""]
    rejected = [" The film was dull.", " It was dull.", " The song was dull, dull and long and very dull.", " no"]
    tokenized = PairTokenizer(tokenizer, TokenizeSettings(max_length=14, max_prompt_length=8))(
        prompts, chosen, rejected
    )
    pairs = [pair for pair, _ in tokenized]
    assert any(cut.responses for _, cut in tokenized) and any(not cut.responses for _, cut in tokenized)
    sequences = [_scored_ids(*sequence) for sequence in _responses(pairs)]
    texts = [tokenizer.decode(ids) for ids in sequences]
    assert [tokenizer(text, split_special_tokens=True)["input_ids"] for text in texts] == sequences  # same tokens
    folder = module.export(tmp_path / "reward", tokenizer)
    assert (folder / "model.safetensors").is_file()
    exported = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    assert exported.config.num_labels == 1 and exported.config.pad_token_id == PAD
    scores = torch.tensor(ClassifierScorer(str(folder), positive_label=None).scores(texts))
    torch.testing.assert_close(scores, _classifier_scores(exported, sequences), atol=1e-5, rtol=0)
    with torch.no_grad():
        for layout in LAYOUTS:
            rewards = module.rewards(collate_function(layout, PAD)(pairs))
            torch.testing.assert_close(rewards, scores, atol=1e-5, rtol=0)


@pytest.mark.parametrize("margin", [0.0, 0.5])
def test_the_logged_loss_is_the_bradley_terry_loss_of_the_rewards(margin, monkeypatch):
    module = RewardModelModule("tiny", center_coefficient=0.1, margin=margin)
    module.configure_model()
    logged = {}
    monkeypatch.setattr(module, "log_dict", lambda values, **options: logged.update(values))
    batch = collate_function("packed", PAD)(RANKINGS)
    loss = module.training_step(batch, 0)
    rewards = module.rewards(batch).detach()
    # the pairs of ranking_pairs="all", by hand: every two responses of a ranking whose ranks differ, better first
    pairs, first = [], 0
    for ranking in RANKINGS:
        k = len(ranking.ranks)
        pairs += [(first + i, first + j) for i in range(k) for j in range(k) if ranking.ranks[i] < ranking.ranks[j]]
        first += k
    better, worse = torch.tensor(pairs).T
    chosen, rejected = rewards[better], rewards[worse]
    # by hand in float64: −log σ(r_w − r_l − m) + c·(r_w + r_l)²
    hand = [
        -math.log(1 / (1 + math.exp(-(w - lose - margin)))) + 0.1 * (w + lose) ** 2
        for w, lose in zip(chosen.double().tolist(), rejected.double().tolist(), strict=True)
    ]
    expected = torch.tensor(sum(hand) / len(hand), dtype=torch.float32)
    torch.testing.assert_close(logged["train/loss"], expected)
    torch.testing.assert_close(loss.detach(), expected)
    torch.testing.assert_close(logged["train/accuracy"], (chosen > rejected).float().mean())
    torch.testing.assert_close(logged["train/margin"], (chosen - rejected).mean())


def test_validation_metrics_are_means_over_every_pair_and_placeholders_add_nothing(module):
    collate = collate_function("packed", PAD)
    batches = [collate(PAIRS[:2]), placeholder_batch(PAD, collate), collate(PAIRS[2:])]
    trainer = L.Trainer(accelerator="cpu", **QUIET)
    loader = DataLoader(batches, batch_size=None, collate_fn=lambda batch: batch)  # the batches as they are
    metrics = trainer.validate(module, dataloaders=loader, verbose=False)[0]
    with torch.no_grad():
        rewards = module.rewards(collate_function("padded", PAD)(PAIRS))
    chosen, rejected = rewards[: len(PAIRS)], rewards[len(PAIRS) :]
    assert metrics["val/loss"] == pytest.approx(bradley_terry_loss(chosen, rejected).mean().item(), abs=1e-6)
    assert metrics["val/accuracy"] == pytest.approx((chosen > rejected).float().mean().item())
    assert metrics["val/margin"] == pytest.approx((chosen - rejected).mean().item(), abs=1e-6)
    placeholder = module.validation_step(batches[1], 1)
    assert placeholder.item() == 0.0


WORDS = ["the", "film", "book", "song", "was", "long", "short", "red", "blue", "old", "new", "and", "very", "quite"]


def _marker_rows(count: int, seed: int) -> list[dict[str, str]]:
    """Rows whose chosen response holds the word "great" somewhere and whose rejected one never does."""
    rng = random.Random(seed)

    def words(n: int) -> list[str]:
        return [rng.choice(WORDS) for _ in range(n)]

    rows = []
    for _ in range(count):
        chosen = words(rng.randint(2, 6))
        chosen.insert(rng.randint(0, len(chosen)), "great")
        rows.append(
            {
                "prompt": f"Tell me about the {rng.choice(WORDS)}.",
                "chosen": " " + " ".join(chosen),
                "rejected": " " + " ".join(words(rng.randint(3, 7))),
            }
        )
    return rows


def test_a_short_run_learns_to_prefer_the_marked_responses():
    L.seed_everything(0, verbose=False)
    data = PreferenceDataModule(
        _marker_rows(320, seed=0),
        load_tokenizer(model_config("tiny")),
        val_size=64,  # held-out pairs
        batch_size=16,
        eval_batch_size=64,
        seed=0,
    )
    module = RewardModelModule("tiny", optimizer={"lr": 1e-3})
    evaluator = L.Trainer(accelerator="cpu", **QUIET)
    before = evaluator.validate(module, datamodule=data, verbose=False)[0]
    L.Trainer(accelerator="cpu", max_steps=24, limit_val_batches=0, **QUIET).fit(module, datamodule=data)
    after = evaluator.validate(module, datamodule=data, verbose=False)[0]
    assert after["val/accuracy"] >= 0.9 and after["val/accuracy"] > before["val/accuracy"] + 0.2
    assert after["val/loss"] < before["val/loss"] and after["val/margin"] > 0


def test_export_warns_about_a_tokenizer_that_adds_tokens_training_never_saw(module, tmp_path, caplog):
    tokenizer = load_tokenizer(model_config("tiny"))
    module.export(tmp_path / "plain", tokenizer)
    assert "adds special tokens" not in caplog.text  # the tiny tokenizer adds none
    bos = TemplateProcessing(single="<|bos|> $A", special_tokens=[("<|bos|>", 0)])  # as Llama's tokenizer does
    tokenizer.backend_tokenizer.post_processor = bos
    assert tokenizer("x")["input_ids"][0] == 0
    module.export(tmp_path / "with_bos", tokenizer)
    assert "adds special tokens ['<|bos|>']" in caplog.text


def test_the_reward_model_command_exports_a_classifier_the_labeller_ranks_samples_with(tmp_path):
    """`algorithm=reward_model` end to end: held-out accuracy in the summary, `policy/` loads as a one-output sequence
    classifier, and the `reward_model` labeller of an online run scores samples with it."""
    run = ["task.source.num_train_pairs=128", "task.source.num_val_pairs=32", "data.batch_size=16",
           "trainer.max_steps=8", "optimizer.lr=1e-3", "trainer.enable_progress_bar=false"]  # fmt: skip
    result = train("algorithm=reward_model", *run, run_dir=tmp_path / "rm")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = read_summary(tmp_path / "rm")
    assert summary["status"] == "completed" and 0 <= summary["metrics"]["val/accuracy"] <= 1
    assert {"val/margin", "val/loss", "train/accuracy"} <= set(summary["metrics"])
    classifier = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm" / "policy")
    assert classifier.config.num_labels == 1
    assert "pipeline_tag: text-classification" in (tmp_path / "rm" / "policy" / "README.md").read_text()

    reward_model = f"algorithm.labeller.reward.name_or_path={tmp_path / 'rm' / 'policy'}"
    online = ["algorithm=online", "labeller@algorithm.labeller=reward_model", reward_model,
              "algorithm.samples_per_prompt=2", "algorithm.sampling.max_new_tokens=8", "samples.num_prompts=0",
              *run[:3], "trainer.max_steps=2"]  # fmt: skip
    result = train(*online, run_dir=tmp_path / "online")
    assert result.returncode == 0, result.stderr[-3000:]
    counts = read_summary(tmp_path / "online")["rollouts"]["counts"]
    assert counts["samples"] == 2 * 16 * 2 and counts.get("unscored_samples", 0) == 0


def test_a_reward_model_whose_head_is_not_one_scalar_is_refused_in_one_line(tmp_path):
    classifier = save_tiny_classifier(tmp_path / "two_labels")  # NEGATIVE / POSITIVE
    result = run_in_process(
        train_command.main, "algorithm=online", "labeller@algorithm.labeller=reward_model",
        f"algorithm.labeller.reward.name_or_path={classifier}", f"hydra.run.dir={tmp_path / 'run'}",
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: task.reward.positive_label: {classifier} has labels ['NEGATIVE', 'POSITIVE']; name the one to score "
        "(null is for a single-output reward model)"
    )
