"""dpo-lightning: Direct Preference Optimization with PyTorch Lightning and Hydra.

The Python API, for use without Hydra (docs/python-api.md):

    import lightning as L
    from dpo_lightning import DPO, DPOLitModule, PreferenceDataModule, load_tokenizer

    rows = [{"prompt": "…", "chosen": "…", "rejected": "…"}, …]
    data = PreferenceDataModule(rows, load_tokenizer("tiny"), val_size=0.25, batch_size=8, eval_batch_size=8)
    module = DPOLitModule(model="tiny", loss=DPO(beta=0.1), optimizer={"lr": 1e-3})
    L.Trainer(max_epochs=3).fit(module, datamodule=data)

Every name of `__all__` is exported lazily (PEP 562 `__getattr__`): `import dpo_lightning` imports nothing else,
and a name imports its module (torch, Lightning, transformers: seconds) only when first used. `dpo-train --help`
imports this package before Hydra parses the command line, and must stay quick; so must every command of `cli/`.
Nothing here imports `dpo_lightning.cli`.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [  # the API; grouped by module in `_MODULES`
    "AOT",
    "CDPO",
    "DPO",
    "IPO",
    "ORPO",
    "RPO",
    "SFT",
    "APODown",
    "APOZero",
    "BCOPair",
    "ClassifierReward",
    "Combo",
    "ConfigError",
    "DPOLitModule",
    "DataError",
    "DiscoPOP",
    "EXOPair",
    "FrozenCopy",
    "Hinge",
    "JudgeLabeller",
    "LLMRanker",
    "LocalSource",
    "LoraAdapters",
    "LoraSettings",
    "NCAPair",
    "Objective",
    "OnlineDPOModule",
    "PPOModule",
    "PPOSettings",
    "PeriodicSync",
    "PlackettLuce",
    "Precomputed",
    "PreferenceDataModule",
    "PromptDataModule",
    "ReferenceFree",
    "ReferenceStrategy",
    "RewardLabeller",
    "RewardModelModule",
    "Robust",
    "Rollouts",
    "RowsSource",
    "RunError",
    "SPPOHard",
    "SamplingSettings",
    "SimPO",
    "TokenizeSettings",
    "Unlikelihood",
    "VaderReward",
    "load_tokenizer",
    "model_config",
]

# The module that defines each lazily exported name (`load_tokenizer` is defined below).
_MODULES: dict[str, tuple[str, ...]] = {
    "dpo_lightning.training.module": ("DPOLitModule",),
    "dpo_lightning.training.reward_model": ("RewardModelModule",),
    "dpo_lightning.online.module": ("OnlineDPOModule",),
    "dpo_lightning.online.rollouts": ("Rollouts",),
    "dpo_lightning.online.ppo": ("PPOModule",),
    "dpo_lightning.online.settings": ("PPOSettings",),
    "dpo_lightning.eval.labellers": ("RewardLabeller", "JudgeLabeller", "LLMRanker"),
    "dpo_lightning.eval.rewards": ("VaderReward", "ClassifierReward"),
    "dpo_lightning.eval.sampling": ("SamplingSettings",),
    "dpo_lightning.data.datamodule": ("PreferenceDataModule",),
    "dpo_lightning.data.prompts": ("PromptDataModule",),
    "dpo_lightning.data.sources.rows": ("RowsSource",),
    "dpo_lightning.data.sources.local": ("LocalSource",),
    "dpo_lightning.data.tokenize": ("TokenizeSettings",),
    "dpo_lightning.models.loading": ("model_config",),
    "dpo_lightning.losses.base": ("Objective",),
    "dpo_lightning.losses.aot": ("AOT",),
    "dpo_lightning.losses.apo": ("APODown", "APOZero"),
    "dpo_lightning.losses.bco_pair": ("BCOPair",),
    "dpo_lightning.losses.cdpo": ("CDPO",),
    "dpo_lightning.losses.combo": ("Combo",),
    "dpo_lightning.losses.discopop": ("DiscoPOP",),
    "dpo_lightning.losses.dpo": ("DPO",),
    "dpo_lightning.losses.exo_pair": ("EXOPair",),
    "dpo_lightning.losses.hinge": ("Hinge",),
    "dpo_lightning.losses.ipo": ("IPO",),
    "dpo_lightning.losses.nca_pair": ("NCAPair",),
    "dpo_lightning.losses.orpo": ("ORPO",),
    "dpo_lightning.losses.plackett_luce": ("PlackettLuce",),
    "dpo_lightning.losses.robust": ("Robust",),
    "dpo_lightning.losses.rpo": ("RPO",),
    "dpo_lightning.losses.sft": ("SFT",),
    "dpo_lightning.losses.simpo": ("SimPO",),
    "dpo_lightning.losses.sppo_hard": ("SPPOHard",),
    "dpo_lightning.losses.unlikelihood": ("Unlikelihood",),
    "dpo_lightning.models.reference": (
        "ReferenceStrategy",
        "FrozenCopy",
        "Precomputed",
        "LoraAdapters",
        "LoraSettings",
        "ReferenceFree",
        "PeriodicSync",
    ),
    "dpo_lightning.errors": ("ConfigError", "DataError", "RunError"),
}
_EXPORTS: dict[str, str] = {name: module for module, names in _MODULES.items() for name in names}

if TYPE_CHECKING:  # for type checkers and IDEs only; at run time `__getattr__` imports on first use
    from transformers import PreTrainedTokenizerBase

    from dpo_lightning.data.datamodule import PreferenceDataModule
    from dpo_lightning.data.prompts import PromptDataModule
    from dpo_lightning.data.sources.local import LocalSource
    from dpo_lightning.data.sources.rows import RowsSource
    from dpo_lightning.data.tokenize import TokenizeSettings
    from dpo_lightning.errors import ConfigError, DataError, RunError
    from dpo_lightning.eval.labellers import JudgeLabeller, LLMRanker, RewardLabeller
    from dpo_lightning.eval.rewards import ClassifierReward, VaderReward
    from dpo_lightning.eval.sampling import SamplingSettings
    from dpo_lightning.losses.aot import AOT
    from dpo_lightning.losses.apo import APODown, APOZero
    from dpo_lightning.losses.base import Objective
    from dpo_lightning.losses.bco_pair import BCOPair
    from dpo_lightning.losses.cdpo import CDPO
    from dpo_lightning.losses.combo import Combo
    from dpo_lightning.losses.discopop import DiscoPOP
    from dpo_lightning.losses.dpo import DPO
    from dpo_lightning.losses.exo_pair import EXOPair
    from dpo_lightning.losses.hinge import Hinge
    from dpo_lightning.losses.ipo import IPO
    from dpo_lightning.losses.nca_pair import NCAPair
    from dpo_lightning.losses.orpo import ORPO
    from dpo_lightning.losses.plackett_luce import PlackettLuce
    from dpo_lightning.losses.robust import Robust
    from dpo_lightning.losses.rpo import RPO
    from dpo_lightning.losses.sft import SFT
    from dpo_lightning.losses.simpo import SimPO
    from dpo_lightning.losses.sppo_hard import SPPOHard
    from dpo_lightning.losses.unlikelihood import Unlikelihood
    from dpo_lightning.models.loading import model_config
    from dpo_lightning.models.reference import (
        FrozenCopy,
        LoraAdapters,
        LoraSettings,
        PeriodicSync,
        Precomputed,
        ReferenceFree,
        ReferenceStrategy,
    )
    from dpo_lightning.online.module import OnlineDPOModule
    from dpo_lightning.online.ppo import PPOModule
    from dpo_lightning.online.rollouts import Rollouts
    from dpo_lightning.online.settings import PPOSettings
    from dpo_lightning.training.module import DPOLitModule
    from dpo_lightning.training.reward_model import RewardModelModule


def __getattr__(name: str) -> Any:
    """Import an exported name's module on first use (PEP 562), and keep the name here for the next use."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def load_tokenizer(model: str | Mapping[str, Any] = "tiny", **overrides: Any) -> PreTrainedTokenizerBase:
    """The tokenizer of a model, described as `DPOLitModule`'s `model` argument describes it: `"tiny"` (the
    shipped tokenizer of the random-init model), a hub id or a local folder, or a `model/` config mapping;
    `overrides` are `model/` keys (e.g. `pad_token="<|endoftext|>"`). Padding: the tokenizer's own pad token, else
    EOS (`models.loading.load_tokenizer`)."""
    from dpo_lightning.models import loading  # here, not at the top: importing the package stays cheap

    return loading.load_tokenizer(loading.model_config(model, **overrides))
