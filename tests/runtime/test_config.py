"""Every option of every config group composes and instantiates; config mistakes fail in one line."""

import re
from pathlib import Path

import pytest
import torch
from helpers import compose, run_in_process, write_jsonl
from hydra.utils import instantiate
from omegaconf import OmegaConf

from dpo_lightning.cli import train
from dpo_lightning.cli.checks import check_group_choices
from dpo_lightning.conf import CONF_DIR
from dpo_lightning.errors import ConfigError
from dpo_lightning.eval.labellers import Labeller
from dpo_lightning.instantiate import build
from dpo_lightning.runtime.checks import validate_config
from dpo_lightning.runtime.faults import DivergenceGuard
from dpo_lightning.runtime.run import build_trainer

# Groups of `config.yaml`; `reward` is nested in each task (chosen with `reward@task.reward=…`), `judge` belongs
# to `winrate.yaml` (composed in tests/eval/test_winrate.py).
GROUPS = sorted(p.name for p in CONF_DIR.iterdir() if any(p.glob("*.yaml")) and p.name not in ("hydra", "judge"))
OPTIONS = [(group, option.stem) for group in GROUPS for option in sorted((CONF_DIR / group).glob("*.yaml"))]
# How the command line names a group's choice, where not `group`; `labeller` is nested in an on-policy algorithm.
OVERRIDE_KEYS = {"reward": "reward@task.reward", "labeller": "labeller@algorithm.labeller"}
CONTEXT = {"labeller": ["algorithm=online"]}  # what a group's options are composed with
# Options whose instantiation downloads or loads a model: composed and validated, not built.
NEEDS_NETWORK = {("reward", "classifier"), ("labeller", "reward_model"), ("labeller", "judge")}
# Keys that an option leaves for the user to set (`???`), and test values for them.
REQUIRED = {
    "local": ["task.source.path=PAIRS"],
    "prompts": ["task.source.path=PAIRS"],
    "hf": ["model.name_or_path=gpt2"],
    "reward_model": ["algorithm.labeller.reward.name_or_path=RM"],
    "judge": ["algorithm.labeller.judge.model=judge-model"],
    "llm_ranking": ["algorithm.labeller.model=judge-model"],
}


def _compose(overrides, tmp_path: Path):
    """The config of a run in `tmp_path`; `PAIRS` in an override names a small pairs file there."""
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": "c", "rejected": "r"}] * 4)
    return compose(*(o.replace("PAIRS", str(pairs)) for o in overrides), run_dir=tmp_path)


def test_every_group_has_options():
    assert {"algorithm", "labeller", "task", "model", "loss", "optimizer", "trainer", "logger"} <= set(GROUPS)


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_validates_and_instantiates(group, option, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    required = REQUIRED.get(option, []) if (group, option) != ("algorithm", "reward_model") else []
    cfg = _compose([*CONTEXT.get(group, []), f"{OVERRIDE_KEYS.get(group, group)}={option}", *required], tmp_path)
    validate_config(cfg)
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    node = {"reward": cfg.task.reward, "labeller": cfg.algorithm.get("labeller")}.get(group, cfg.get(group))
    assert node is not None
    if group == "task":
        source = build(node.source, "task.source")
        assert hasattr(source, "load")
    elif group == "optimizer":
        options = OmegaConf.to_container(node, resolve=True)
        options.pop("warmup_steps")
        instantiate(options, params=[torch.nn.Parameter(torch.zeros(1))])
    elif group == "trainer":
        accelerator = node.accelerator if torch.cuda.is_available() else "cpu"  # GPU options on a CPU machine
        assert instantiate(node, accelerator=accelerator, logger=False).max_epochs == node.max_epochs
    elif group in ("loss", "logger", "reward") and node and (group, option) not in NEEDS_NETWORK:
        assert instantiate(node) is not None
    elif group in ("algorithm", "labeller") and "labeller" in cfg.algorithm and (group, option) not in NEEDS_NETWORK:
        assert isinstance(build(cfg.algorithm.labeller, "algorithm.labeller"), Labeller)
    elif group == "algorithm":
        assert cfg.algorithm.name == option
    elif group == "model":
        assert node.trust_remote_code is False


def test_default_config_is_the_offline_demo(tmp_path):
    cfg = _compose([], tmp_path)
    assert (cfg.task.name, cfg.model.name, cfg.loss._target_, cfg.beta) == (
        "sentiment",
        "tiny",
        "dpo_lightning.losses.dpo.DPO",
        0.1,
    )
    assert cfg.loss.beta == 0.1


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["beta=0"], "beta: must be > 0"),
        (["beta=-1"], "beta: must be > 0"),
        (
            ["task.tokenize.max_prompt_length=64"],
            "task.tokenize.max_prompt_length: must be in [1, task.tokenize.max_length=64)",
        ),
        (
            ["task.tokenize.truncation_mode=middle"],
            "task.tokenize.truncation_mode: must be one of keep_start, keep_end",
        ),
        (["data.batch_size=0"], "data.batch_size: must be an integer ≥ 1"),
        (["data.layout=rows"], "data.layout: must be one of prefix_shared, packed, padded, got 'rows'"),
        (
            ["data.packing_max_tokens=1"],
            "data.packing_max_tokens: must be null (the batch's longest pair) or an integer ≥ 2",
        ),
        (["data.group_by_length=true", "task.streaming=true"], "data.group_by_length: needs map-style data"),
        (["model.lean_logprobs=maybe"], "model.lean_logprobs: must be true or false"),
        (["model.compile=1"], "model.compile: must be true or false"),
        (
            ["model.attn_implementation=flex_attention", "trainer=cpu"],
            "model.attn_implementation: flex_attention has no backward pass on the CPU",
        ),
        (["model.dtype=float8"], "model.dtype: must be one of"),
        (["task=local"], "task.source.path: required but not set"),
        (["model=hf"], "model.name_or_path: required but not set"),
    ],
)
def test_bad_values_fail_with_one_line_naming_the_key(overrides, message, tmp_path):
    cfg = _compose(overrides, tmp_path)
    with pytest.raises(ConfigError) as error:
        validate_config(cfg)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    "arguments",
    [["model=nope"], ["-m", "loss=dpo,nope"], ["task=sentiment", "logger=tensorboard"]],
)
def test_unknown_group_option_lists_the_allowed_ones(arguments):
    with pytest.raises(ConfigError) as error:
        check_group_choices(arguments, CONF_DIR)
    group = str(error.value).split(":")[0]
    allowed = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
    assert "unknown option" in str(error.value) and ", ".join(allowed) in str(error.value)


def test_known_choices_and_plain_keys_pass():
    check_group_choices(["-m", "loss=dpo,sft", "beta=0.5", "trainer.max_steps=3", "--cfg", "job"], CONF_DIR)


def test_every_conf_key_has_a_comment():
    uncommented = [
        f"{path.relative_to(CONF_DIR)}:{number}: {line.strip()}"
        for path in sorted(CONF_DIR.rglob("*.yaml"))
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if re.match(r"^\s*[A-Za-z_][\w.-]*:", line) and "#" not in line
    ]
    assert not uncommented, "\n".join(uncommented)


def test_a_bad_loss_hyperparameter_fails_on_the_command_line_in_one_line(tmp_path):
    """The objective's own check (raised inside Hydra's instantiate) reaches the user as one line, exit 2 (the train
    command called in-process)."""
    result = run_in_process(train.main, "loss=cdpo", "loss.label_smoothing=0.7", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: loss.label_smoothing: must be in [0.0, 0.5), got 0.7"


@pytest.mark.parametrize(
    ("overrides", "guard_clips", "lightning_clips"),
    [
        ([], 10.0, None),
        (["trainer.gradient_clip_val=null"], None, None),
        (["+trainer.gradient_clip_algorithm=value"], None, 10.0),
    ],
    ids=["by-norm", "off", "by-value"],
)
def test_the_divergence_guard_clips_by_norm_in_place_of_lightning(overrides, guard_clips, lightning_clips, tmp_path):
    """Clipping by norm is the guard's (it has the gradient norm already); clipping by value stays Lightning's."""
    trainer = build_trainer(_compose(["trainer.enable_progress_bar=false", *overrides], tmp_path), tmp_path, [])
    (guard,) = [callback for callback in trainer.callbacks if isinstance(callback, DivergenceGuard)]
    assert (guard.max_norm, trainer.gradient_clip_val) == (guard_clips, lightning_clips)
