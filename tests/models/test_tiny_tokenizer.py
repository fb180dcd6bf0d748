"""The shipped tokenizer of model=tiny: offline, byte-level, reproducible."""

import subprocess
import sys

import pytest
from helpers import ROOT

from dpo_lightning.models.tiny_tokenizer import TINY_TOKENIZER_DIR, load_tiny_tokenizer

TEXTS = [
    "Café — naïve 東京 🎬",
    'I watched "The Silent Harbor" last night and the acting was truly wonderful.',
    "  leading spaces, trailing spaces  ",
    "Tabs\tand\nnewlines\r\n, emoji 👍🏽, Ελληνικά, العربية, zero\u200bwidth, combining e\u0301.",
    "",
]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tiny_tokenizer()


def test_shipped_files_are_small():
    files = list(TINY_TOKENIZER_DIR.iterdir())
    assert "tokenizer.json" in {file.name for file in files}
    assert sum(file.stat().st_size for file in files) < 300_000


def test_special_tokens_and_settings(tokenizer):
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<|bos|>", "<|eos|>", "<|pad|>")
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (0, 1, 2)
    assert tokenizer.unk_token is None  # byte-level: nothing is ever unknown
    assert (tokenizer.model_max_length, tokenizer.padding_side) == (1024, "right")


def test_nothing_is_added_automatically(tokenizer):
    text = TEXTS[1]
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert tokenizer(text).input_ids == ids  # no BOS/EOS even when asked to add special tokens
    assert not {0, 1, 2} & set(ids)


@pytest.mark.parametrize("text", TEXTS)
def test_any_text_round_trips_exactly(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert all(0 <= i < len(tokenizer) for i in ids)
    assert tokenizer.decode(ids) == text


def test_merges_compress_reviews(tokenizer):
    review = " the acting was truly wonderful, and the ending felt really charming."
    assert len(tokenizer(review, add_special_tokens=False).input_ids) < len(review.encode()) / 3


def test_rebuild_reproduces_the_shipped_files(tmp_path):
    """`scripts/build_tiny_tokenizer.py` rebuilds exactly the shipped files."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_tiny_tokenizer.py"), str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (tmp_path / name).read_text() == (TINY_TOKENIZER_DIR / name).read_text(), name


def test_chat_template_renders_roles_and_generation_prompt(tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye"},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\nHello.\n<|user|>\nBye\n<|assistant|>\n"
    assert tokenizer.apply_chat_template(messages[:2], tokenize=False) == "<|system|>\nBe brief.\n<|user|>\nHi\n"
