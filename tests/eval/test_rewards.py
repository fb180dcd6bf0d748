"""Task rewards: VADER and a sequence classifier, and a classifier that cannot work stopping the run at start-up."""

import pytest
import torch
from helpers import reference_logits, run_in_process, save_tiny_classifier, softmax_column
from transformers import AutoModelForSequenceClassification

from dpo_lightning.cli import train
from dpo_lightning.eval.rewards import ClassifierReward, VaderReward, sentiment_reward
from dpo_lightning.models.tiny_tokenizer import load_tiny_tokenizer

PROMPTS = ["The acting was", "Two hours later, the plot seemed"]
COMPLETIONS = [" truly wonderful.", " dull and painful, and I want my money back."]


def test_vader_scores_prompt_and_completion_together():
    expected = [sentiment_reward(p, c) for p, c in zip(PROMPTS, COMPLETIONS, strict=True)]
    assert VaderReward()(PROMPTS, COMPLETIONS) == expected and expected[0] > 0 > expected[1]


def test_classifier_reward_is_the_positive_probability_of_prompt_plus_completion(tmp_path):
    folder = save_tiny_classifier(tmp_path / "classifier")
    texts = [p + c for p, c in zip(PROMPTS, COMPLETIONS, strict=True)]
    expected = softmax_column(reference_logits(folder, texts), column=1)  # label 1 is POSITIVE
    assert ClassifierReward(str(folder), batch_size=1)(PROMPTS, COMPLETIONS) == pytest.approx(expected, abs=1e-5)


def test_the_classifier_reads_a_special_token_text_in_a_sample_as_text(tmp_path):
    folder = save_tiny_classifier(tmp_path / "classifier")
    tokenizer = load_tiny_tokenizer()
    text = f"The film ended{tokenizer.eos_token} and then {tokenizer.pad_token}it was great"
    with torch.no_grad():
        ids = tokenizer(text, split_special_tokens=True)["input_ids"]
        model = AutoModelForSequenceClassification.from_pretrained(folder).eval().double()
        logits = model(input_ids=torch.tensor([ids])).logits
    assert not {tokenizer.eos_token_id, tokenizer.pad_token_id} & set(ids)
    expected = softmax_column(logits, column=1)
    assert ClassifierReward(str(folder), batch_size=1)([text], [""]) == pytest.approx(expected, abs=1e-5)


def test_a_classifier_without_the_positive_label_stops_the_run_before_training(tmp_path):
    """The train command, called in-process."""
    folder = save_tiny_classifier(tmp_path / "classifier", id2label={0: "LABEL_0", 1: "LABEL_1"})
    command = [
        "reward@task.reward=classifier",
        f"task.reward.name_or_path={folder}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    result = run_in_process(train.main, *command)
    assert result.returncode == 2
    (line,) = [line for line in result.stderr.splitlines() if "error" in line.lower()]  # besides progress bars
    assert line.startswith("error: task.reward.positive_label:") and "POSITIVE" in line
    assert not (tmp_path / "run" / "checkpoints").exists()
