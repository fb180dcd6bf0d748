"""The tokenizer of `model=tiny`: a small byte-level BPE that the project ships, built from its own data.

`python scripts/build_tiny_tokenizer.py` rebuilds it from the sentiment generator's text (prompts and
continuations of `generate_sentiment_pairs(20000, seed=0)`, labelled by VADER) and saves it to
`dpo_lightning/assets/tiny_tokenizer/`; the rebuild is deterministic, so the shipped files can always be
reproduced. Byte-level means that any Unicode
text encodes without unknown tokens, so the tiny model also works on `task=local` data.

It has a minimal chat template (`CHAT_TEMPLATE`). Special tokens: <|bos|> = 0, <|eos|> = 1, <|pad|> = 2.
Encoding adds none of them (no post-processor): the trainer tokenizes with `add_special_tokens=False` and
appends EOS to every response itself.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

TINY_TOKENIZER_DIR = Path(__file__).parents[1] / "assets" / "tiny_tokenizer"
BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"  # ids 0, 1, 2: the trainer's special tokens come first
CORPUS_PAIRS, CORPUS_SEED = 20_000, 0  # the generator run whose texts the shipped tokenizer was trained on
MODEL_MAX_LENGTH = 1024
# A minimal chat template, so that conversational tasks (ultrafeedback, conversational local rows) run offline:
#   <|system|>\n…\n<|user|>\n…\n<|assistant|>\n…\n   and, with the generation prompt, a final <|assistant|>\n.
# The role tags are plain text, not special tokens; the trainer appends EOS after each response itself.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def train_byte_level_bpe(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """A byte-level BPE of at most `vocab_size` tokens trained on `texts`, with BOS, EOS and PAD as ids 0, 1, 2."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: no text is ever unknown
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def build_tiny_tokenizer(corpus: Iterable[str], vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE of at most `vocab_size` tokens on `corpus` (the sentiment generator's texts:
    `scripts/build_tiny_tokenizer.py`); deterministic.

    The vocabulary stops short of `vocab_size` once no pair of tokens is left to merge (the corpus is small and
    repetitive: about 1,000 tokens). The trainer breaks ties between equally frequent pairs by token id, so the
    merges depend neither on corpus order nor on the number of threads (checked with tokenizers 0.23).
    """
    return PreTrainedTokenizerFast(
        tokenizer_object=train_byte_level_bpe(corpus, vocab_size),
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=MODEL_MAX_LENGTH,
        padding_side="right",
        chat_template=CHAT_TEMPLATE,
    )


def load_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """The shipped tokenizer, read from `TINY_TOKENIZER_DIR` (no network)."""
    return PreTrainedTokenizerFast.from_pretrained(TINY_TOKENIZER_DIR)


if __name__ == "__main__":  # the rebuild command of earlier versions
    print("error: the tiny tokenizer is rebuilt by: python scripts/build_tiny_tokenizer.py", file=sys.stderr)
    sys.exit(2)
