"""The tokenizer of `model=tiny`: a byte-level BPE the project ships, built from its own data.

`python -m dpo_lightning.tiny_tokenizer` rebuilds it deterministically from the sentiment generator's text
and writes it to `assets/tiny_tokenizer/`. Byte-level means any Unicode text encodes without unknown
tokens, so the tiny model also works on `task=local` data. Special tokens: <|bos|> = 0, <|eos|> = 1,
<|pad|> = 2; nothing is added automatically (the trainer appends EOS to responses itself).
"""

from __future__ import annotations

import os
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

TINY_TOKENIZER_DIR = Path(__file__).parent / "assets" / "tiny_tokenizer"
SPECIAL_TOKENS = ("<|bos|>", "<|eos|>", "<|pad|>")
CORPUS_PAIRS, CORPUS_SEED = 5000, 0


def build_tiny_tokenizer(vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Train the byte-level BPE on prompts and continuations of `generate_sentiment_pairs`."""
    from dpo_lightning.data.sources.sentiment import generate_sentiment_pairs

    os.environ.setdefault("RAYON_NUM_THREADS", "1")  # single-threaded training: the same merges every time
    rows = generate_sentiment_pairs(CORPUS_PAIRS, seed=CORPUS_SEED)
    corpus = [row[column] for row in rows for column in ("prompt", "chosen", "rejected")]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    bos, eos, pad = SPECIAL_TOKENS
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=bos, eos_token=eos, pad_token=pad, model_max_length=1024
    )


def load_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """The shipped tokenizer, from `TINY_TOKENIZER_DIR` (no network)."""
    return PreTrainedTokenizerFast.from_pretrained(TINY_TOKENIZER_DIR)


if __name__ == "__main__":
    build_tiny_tokenizer().save_pretrained(TINY_TOKENIZER_DIR)
    print(f"wrote {TINY_TOKENIZER_DIR}")
