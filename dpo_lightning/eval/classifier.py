"""A Hugging Face sequence classifier as a scorer of texts: p(label | text), or a reward model's raw score.

Used by the reward-model judge (win rates) and as a ground-truth reward, e.g. p(positive | x + y) from
`siebert/sentiment-roberta-large-english` for the IMDb sentiment task.
"""

from __future__ import annotations

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from dpo_lightning.errors import ConfigError


def _sibling_key(key: str, name: str) -> str:
    """`judge.positive_label` → `judge.name_or_path`: the config key of another argument at the same level."""
    prefix, _, _ = key.rpartition(".")
    return f"{prefix}.{name}" if prefix else name


class ClassifierScorer:
    """Scores texts with `AutoModelForSequenceClassification` (eval mode, no gradients).

    Args:
        name_or_path: hub id or local folder holding the model and its tokenizer.
        positive_label: the label (a value of `model.config.id2label`) whose softmax probability is the score;
            None for a single-logit reward model (num_labels == 1), whose raw logit is the score.
        batch_size: texts per forward pass; each batch is padded to its longest text.
        max_length: texts are truncated to this many tokens (special tokens included).
        device: torch device of the model, e.g. `cpu`, `cuda`, `cuda:1`.
        trust_remote_code: allow code from the model repository (off unless configured).
        config_key: the config key `positive_label` came from, named in errors (e.g. `judge.positive_label`);
            loading errors name its sibling `name_or_path`.
        truncation_side: `right` keeps a long text's beginning, `left` its end (the response, when scoring
            prompt + response).

    Raises:
        ConfigError: the model cannot be loaded, or `positive_label` does not fit its labels.
    """

    def __init__(
        self,
        name_or_path: str,
        positive_label: str | None = "POSITIVE",
        batch_size: int = 32,
        max_length: int = 512,
        device: str = "cpu",
        trust_remote_code: bool = False,
        config_key: str = "positive_label",
        truncation_side: str = "right",
    ) -> None:
        if batch_size < 1:
            raise ConfigError(_sibling_key(config_key, "batch_size"), f"must be ≥ 1, got {batch_size}")
        if max_length < 1:
            raise ConfigError(_sibling_key(config_key, "max_length"), f"must be ≥ 1, got {max_length}")
        if truncation_side not in ("left", "right"):
            raise ConfigError(
                _sibling_key(config_key, "truncation_side"), f"must be one of left, right, got {truncation_side!r}"
            )
        self.name_or_path = name_or_path
        self.positive_label = positive_label
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = torch.device(device)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
            self.model = AutoModelForSequenceClassification.from_pretrained(
                name_or_path, trust_remote_code=trust_remote_code
            )
        except (OSError, ValueError) as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ConfigError(
                _sibling_key(config_key, "name_or_path"), f"cannot load '{name_or_path}': {first_line}"
            ) from error
        self.model.to(self.device).eval().requires_grad_(False)
        self.tokenizer.truncation_side = truncation_side
        self.label_index = self._label_index(config_key)
        if self.tokenizer.pad_token is None:  # GPT-2-style tokenizers: pad with EOS (padding is masked)
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:  # decoder classifiers pool the last non-pad token
            self.model.config.pad_token_id = self.tokenizer.pad_token_id

    def _label_index(self, config_key: str) -> int | None:
        """The logit column of `positive_label`, or None for a single-logit reward model."""
        labels = [str(self.model.config.id2label[i]) for i in range(self.model.config.num_labels)]
        if self.model.config.num_labels == 1:
            if self.positive_label is not None:
                raise ConfigError(
                    config_key,
                    f"{self.name_or_path} is a single-output reward model (labels {labels}); "
                    "set it to null to score with its raw logit",
                )
            return None
        if self.positive_label is None:
            raise ConfigError(
                config_key,
                f"{self.name_or_path} has labels {labels}; name the one to score "
                "(null is for a single-output reward model)",
            )
        if self.positive_label not in labels:
            raise ConfigError(config_key, f"{self.name_or_path} has labels {labels}; none is {self.positive_label!r}")
        return labels.index(self.positive_label)

    @torch.no_grad()
    def scores(self, texts: list[str]) -> list[float]:
        """One score per text, in order: p(positive_label | text) in [0, 1], or the reward model's raw logit.

        Each distinct text is scored once, in batches of similar lengths (less padding); equal texts therefore get
        exactly equal scores, whatever batches they would otherwise have been padded in. A special token's text in a
        text is encoded as text (the tokenizer still adds its own special tokens around it).
        """
        unique = sorted(dict.fromkeys(texts), key=len, reverse=True)  # distinct, longest first (stable)
        scores: list[float] = []
        for start in range(0, len(unique), self.batch_size):
            batch = self.tokenizer(
                unique[start : start + self.batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                split_special_tokens=True,  # a sample's text is text: "</s>" in it is not the classifier's token
                return_tensors="pt",
            ).to(self.device)
            logits = self.model(**batch).logits.float()  # [batch, num_labels]
            if self.label_index is None:
                scores.extend(logits[:, 0].tolist())
            else:
                scores.extend(logits.softmax(dim=-1)[:, self.label_index].tolist())
        by_text = dict(zip(unique, scores, strict=True))
        return [by_text[text] for text in texts]
