"""The run's `policy/` folder: the trained policy in Hugging Face format, with its model card (`README.md`)."""

from __future__ import annotations

import math
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from dpo_lightning.data.sources.base import HubSource
from dpo_lightning.runtime.secrets import redact_overrides

# The final metrics a model card lists (those the run has), in this order.
CARD_METRICS: tuple[str, ...] = (
    "val/loss",
    "val/rewards/accuracies",
    "val/accuracy",
    "val/margin",
    "val/reward",
    "val/kl",
)
# What each `reference/` option holds as π_ref, for the model card.
REFERENCE_STRATEGIES = {
    "model": "a frozen copy of the initial policy",
    "precomputed": "the initial policy's log-probabilities, computed once before training",
    "lora": "the initial model with the LoRA adapters turned off (only the adapters train)",
    "sync": "a copy of the policy, moved towards it periodically",
    "none": "none: reference-free (π_ref ≡ 1)",
}


def export_policy(
    policy: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    folder: Path,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Save config, safetensors weights and tokenizer, loadable with the Auto classes offline.

    `state_dict`: the weights to write instead of the policy's own (a sharded policy's gathered full state
    dict, `parallel.full_state_dict`); None: the policy's.
    """
    policy.save_pretrained(folder, state_dict=state_dict)
    tokenizer.save_pretrained(folder)
    return folder


def hub_dataset(source: object) -> str | None:
    """The Hugging Face hub dataset id a task's source read (some split from the hub); None for local files and
    generated data."""
    if isinstance(source, HubSource) and any(split not in source.data_files for split in source.splits):
        return source.path
    return None


def write_model_card(
    folder: Path, summary: Mapping[str, Any], source: object = None, argv: Sequence[str] | None = None
) -> Path:
    """Write `<folder>/README.md`, the model card the Hub shows: a YAML metadata header (`base_model`, `datasets`,
    `tags`, `library_name`, `pipeline_tag`) and a short body: objective and β, reference strategy, final metrics,
    and the command that made it.

    Args:
        folder: the exported `policy/` folder.
        summary: the run summary's content: its `config` (redacted, as the summary holds it), `choices` and
            `metrics`.
        source: the task's source (`task.source`): its hub dataset id, if it read one, goes into `datasets`.
        argv: the command line; None: `sys.argv` (the run calls this inside `redacted_argv()`). Secret-looking
            `key=value` overrides and the values of secret environment variables are redacted (again) here.
    """
    dataset = hub_dataset(source)
    config = summary.get("config") or {}
    choices = summary.get("choices") or {}
    model, loss = config.get("model") or {}, config.get("loss") or {}
    loss_name = choices.get("loss") or _class_name(loss).lower()
    base_model = model.get("init_from") or model.get("name_or_path")
    adapters_only = (folder / "adapter_config.json").is_file()  # reference=lora with merge_on_export=false
    header: dict[str, Any] = {}
    if base_model:
        header["base_model"] = str(base_model)
    if dataset:
        header["datasets"] = [dataset]
    reward_model = (config.get("algorithm") or {}).get("name") == "reward_model"
    header["tags"] = (
        ["reward-model", "dpo-lightning"] if reward_model else list(dict.fromkeys(["dpo", "dpo-lightning", loss_name]))
    )
    header["library_name"] = "peft" if adapters_only else "transformers"
    header["pipeline_tag"] = "text-classification" if reward_model else "text-generation"

    name = model.get("name") or "model"
    beta = loss.get("beta")
    objective = f"`{loss_name}` (`{loss.get('_target_', '?')}`)" + (f", β = {beta}" if beta is not None else "")
    reference = choices.get("reference") or _class_name(config.get("reference") or {})
    task = config.get("task") or {}
    start = f"`{base_model}`" if base_model else "a random initialisation"
    data = f"`{dataset}` (task `{task.get('name', '?')}`)" if dataset else f"task `{task.get('name', '?')}`"
    lines = [
        f"# {name}, trained with dpo-lightning",
        "",
        f"A causal language model trained from {start} on the preference data of {data} with "
        "dpo-lightning: Direct Preference Optimization "
        "([Rafailov et al., 2023](https://arxiv.org/abs/2305.18290)) and its family of preference losses.",
        "",
        f"- Objective: {objective}",
        f"- Reference (π_ref): `{reference}`"
        + (f" — {REFERENCE_STRATEGIES[reference]}" if reference in REFERENCE_STRATEGIES else ""),
    ]
    if reward_model:
        algorithm = config.get("algorithm") or {}
        centring, margin = algorithm.get("center_coefficient", 0.0), algorithm.get("margin", 0.0)
        lines = [
            f"# {name} reward model, trained with dpo-lightning",
            "",
            f"A Bradley–Terry reward model r(x, y) trained from {start} on the preference data of {data}: a "
            "sequence classifier with one output, its score read at the last token of prompt + response.",
            "",
            f"- Objective: −log σ(r(x, y_w) − r(x, y_l) − {margin}) + {centring} · (r(x, y_w) + r(x, y_l))²",
            "- Score a text with `AutoModelForSequenceClassification.from_pretrained(<folder>)`: the logit of "
            "prompt + response.",
        ]
    if adapters_only:
        lines.append("- This folder holds the LoRA adapters only: load them on top of the base model with PEFT.")
    metrics = summary.get("metrics") or {}
    shown = [(key, metrics[key]) for key in CARD_METRICS if key in metrics]
    lines += ["", "## Final validation metrics", ""]
    if shown:
        lines += ["| metric | value |", "|---|---|", *(f"| `{key}` | {_number(value)} |" for key, value in shown)]
    else:
        lines.append("None recorded.")
    lines += ["", "## Command", "", "```bash", _command(sys.argv if argv is None else argv), "```", ""]
    text = "---\n" + yaml.safe_dump(header, sort_keys=False, allow_unicode=True) + "---\n\n" + "\n".join(lines)
    path = folder / "README.md"
    path.write_text(text, encoding="utf-8")
    return path


def _class_name(node: Mapping[str, Any]) -> str:
    return str(node.get("_target_", "?")).rsplit(".", 1)[-1]


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) and math.isfinite(value) else str(value)


def _command(argv: Sequence[str]) -> str:
    """The command line, redacted and quoted for a shell: `python train.py …` (or `dpo-train …`)."""
    program = Path(argv[0]).name if argv else "dpo-train"
    program = f"python {program}" if program.endswith(".py") else program
    return " ".join([program, *(shlex.quote(argument) for argument in redact_overrides(argv[1:]))])
