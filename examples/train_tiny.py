"""Train the tiny model with DPO from Python: no Hydra, no files, no network (docs/python-api.md).

The policy is `model="tiny"`: a small Llama with random weights and the tokenizer the project ships. The data is
a few dozen preference rows built in memory, in which the chosen answer always calls the thing "great" and the
rejected one "dull": a preference the model can learn in a few steps. A plain `lightning.Trainer` trains it for a
few epochs on the CPU (well under a minute on 2 cores), and the validation preference accuracy — the share of
held-out pairs whose chosen response gets the higher implicit reward β·log π/π_ref — is printed before and after.
Before training the policy is its own reference: every reward is 0, so the accuracy is 0 and the DPO loss log 2.

    python examples/train_tiny.py
"""

from __future__ import annotations

import random

import lightning as L

from dpo_lightning import DPO, DPOLitModule, PreferenceDataModule, load_tokenizer

THINGS = ["film", "book", "song", "meal", "game", "show", "trip", "play", "park", "café", "poem", "hotel"]
ASKS = ["What did you think of the {}?", "How was the {}?", "Tell me about the {}.", "Any thoughts on the {}?"]


def preference_rows(count: int, seed: int = 0) -> list[dict[str, str]]:
    """`count` rows {"prompt", "chosen", "rejected"}: the chosen answer says "great", the rejected one "dull"."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        thing = rng.choice(THINGS)
        rows.append(
            {
                "prompt": rng.choice(ASKS).format(thing),
                "chosen": f" The {thing} was great.",
                "rejected": f" The {thing} was dull.",
            }
        )
    return rows


def train_tiny(epochs: int = 3, seed: int = 0) -> dict[str, float]:
    """Train the tiny model with DPO on `preference_rows`; the validation metrics before and after training:
    {"accuracy_before", "accuracy_after", "loss_before", "loss_after"}."""
    L.seed_everything(seed, verbose=False)
    data = PreferenceDataModule(
        preference_rows(64, seed),  # a list of dicts (or a datasets.Dataset)
        load_tokenizer("tiny"),
        val_size=0.25,  # hold out a quarter of the rows for validation (or pass val_data=…)
        batch_size=8,
        eval_batch_size=16,
        seed=seed,
    )
    module = DPOLitModule(model="tiny", loss=DPO(beta=0.1), optimizer={"lr": 1e-3})
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    before = trainer.validate(module, datamodule=data, verbose=False)[0]
    trainer.fit(module, datamodule=data)
    after = trainer.validate(module, datamodule=data, verbose=False)[0]
    return {
        "accuracy_before": before["val/rewards/accuracies"],
        "accuracy_after": after["val/rewards/accuracies"],
        "loss_before": before["val/loss"],
        "loss_after": after["val/loss"],
    }


if __name__ == "__main__":
    metrics = train_tiny()
    print(f"validation accuracy: {metrics['accuracy_before']:.2f} untrained, {metrics['accuracy_after']:.2f} after")
    print(f"validation DPO loss: {metrics['loss_before']:.3f} untrained, {metrics['loss_after']:.3f} after")
