"""Rebuild the tokenizer of `model=tiny` (`dpo_lightning/assets/tiny_tokenizer/`) from the sentiment generator's
texts: `python scripts/build_tiny_tokenizer.py [FOLDER]` (default: the shipped folder). Deterministic: it
reproduces the shipped files."""

import sys
from pathlib import Path

from dpo_lightning.data.sources.sentiment import generate_sentiment_pairs
from dpo_lightning.eval.rewards import VaderReward
from dpo_lightning.models.tiny_tokenizer import CORPUS_PAIRS, CORPUS_SEED, TINY_TOKENIZER_DIR, build_tiny_tokenizer


def corpus() -> list[str]:
    """Every prompt and continuation of the sentiment generator's corpus run."""
    rows = generate_sentiment_pairs(CORPUS_PAIRS, seed=CORPUS_SEED, labeller=VaderReward())
    return [row[column] for row in rows for column in ("prompt", "chosen", "rejected")]


if __name__ == "__main__":
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else TINY_TOKENIZER_DIR
    build_tiny_tokenizer(corpus()).save_pretrained(folder)
    print(f"wrote {folder}")
