"""The shipped tokenizer of model=tiny: offline, byte-level, reproducible."""

import json

from dpo_lightning.tiny_tokenizer import TINY_TOKENIZER_DIR, build_tiny_tokenizer, load_tiny_tokenizer

TEXT = "Café — naïve 東京 🎬 I watched “The Silent Harbor” and the acting was wonderful.\n\tTabs too."


def test_loads_offline_with_fixed_special_tokens():
    tokenizer = load_tiny_tokenizer()
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (0, 1, 2)
    assert tokenizer("hello", add_special_tokens=False).input_ids == tokenizer("hello").input_ids


def test_any_text_round_trips_without_unknown_tokens():
    tokenizer = load_tiny_tokenizer()
    ids = tokenizer(TEXT, add_special_tokens=False).input_ids
    assert tokenizer.decode(ids) == TEXT
    review = " the acting was truly wonderful, and the ending felt really charming."
    assert len(tokenizer(review, add_special_tokens=False).input_ids) < len(review.encode()) / 3  # merges work


def test_rebuild_reproduces_the_shipped_files():
    rebuilt = build_tiny_tokenizer()
    shipped = json.loads((TINY_TOKENIZER_DIR / "tokenizer.json").read_text())
    assert rebuilt.get_vocab() == load_tiny_tokenizer().get_vocab()
    assert json.loads(rebuilt.backend_tokenizer.to_str())["model"]["merges"] == shipped["model"]["merges"]
