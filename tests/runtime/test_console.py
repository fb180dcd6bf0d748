"""The console (config tree, progress bar, `--help`) and the secrets rule: no API key or token is ever written."""

import io
import secrets

import pytest
import yaml
from helpers import SMALL, compose, offline_env, run_in_process, train
from hydra.types import RunMode
from lightning.pytorch.callbacks import RichProgressBar
from omegaconf import OmegaConf
from rich.console import Console

from dpo_lightning.cli import train as train_command
from dpo_lightning.conf import CONF_DIR
from dpo_lightning.errors import ConfigError
from dpo_lightning.runtime.console import config_tree, print_config_tree, progress_bar, save_resolved_config
from dpo_lightning.runtime.secrets import (
    REDACTED,
    RedactHydraOutput,
    is_secret_key,
    redact,
    redact_overrides,
    redact_printed_config,
)

SECRET = "sk-" + "9f3b2c" * 6  # a made-up key


@pytest.mark.parametrize(
    "key",
    [
        "token",
        "hf_token",
        "use_auth_token",
        "api_key",
        "WANDB_API_KEY",
        "apiKey",
        "x-api-key",
        "Authorization",
        "client_secret",
        "password",
        "aws_secret_access_key",
        "credentials",
        "hub.token",
    ],
)
def test_secret_looking_keys(key):
    assert is_secret_key(key)


@pytest.mark.parametrize(
    "key",
    [
        "api_key_env",
        "pad_token",
        "eos_token",
        "pad_token_id",
        "max_new_tokens",
        "max_tokens",
        "tokenizer",
        "key",
        "num_key_value_heads",
        "secret_file",
        "monkey",
        "tokens_per_s",
        "OPENAI_API_KEY_ENV",
    ],
)
def test_ordinary_keys(key):
    assert not is_secret_key(key)


def test_no_shipped_config_key_holds_a_secret():
    """Secrets come from environment variables (e.g. `judge.api_key_env`), so redaction never hides a setting."""

    def keys(node):
        if isinstance(node, dict):
            for key, value in node.items():
                yield key
                yield from keys(value)
        elif isinstance(node, list):
            for value in node:
                yield from keys(value)

    found = [(path.name, k) for path in CONF_DIR.rglob("*.yaml") for k in keys(yaml.safe_load(path.read_text()))]
    assert len(found) > 200 and "api_key_env" in {k for _, k in found}
    assert [(name, key) for name, key in found if isinstance(key, str) and is_secret_key(key)] == []


def test_redact_nested_dicts_and_lists_keeps_the_rest(monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    config = {
        "judge": {"api_key_env": "OPENAI_API_KEY", "api_key": SECRET, "url": "https://x"},
        "servers": [{"name": "a", "token": "short"}, {"name": "b", "token": None}],
        "headers": {"Authorization": {"scheme": "Bearer", "value": SECRET}},
        "note": f"called with key={SECRET}!",
        "beta": 0.1,
        "pad_token": "<|pad|>",
    }
    original = yaml.safe_dump(config)
    assert redact(config) == {
        "judge": {"api_key_env": "OPENAI_API_KEY", "api_key": REDACTED, "url": "https://x"},
        "servers": [{"name": "a", "token": REDACTED}, {"name": "b", "token": None}],  # null: none set
        "headers": {"Authorization": REDACTED},
        "note": f"called with key={REDACTED}!",  # the value of a secret key, found elsewhere too
        "beta": 0.1,
        "pad_token": "<|pad|>",
    }
    assert yaml.safe_dump(config) == original  # the input is left alone


def test_redact_removes_secret_environment_values_and_given_secrets(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setenv("SOME_PATH", "/usr/local/share")  # not a secret-looking name: kept
    given = "another-secret-value"
    config = {"paths": ["/usr/local/share", f"{SECRET}/x"], "cmd": f"--flag {given}", "n": 3, "short": "abc"}
    assert redact(config, secrets=[given, "abc"]) == {
        "paths": ["/usr/local/share", f"{REDACTED}/x"],
        "cmd": f"--flag {REDACTED}",
        "n": 3,
        "short": "abc",  # shorter than MIN_SECRET_LENGTH: never cut out of other text
    }


def test_redact_overrides():
    arguments = ["-m", "+hub.token=abc", "beta=0.1", "judge.api_key_env=MY_KEY", f"++x.api_key='{SECRET}'"]
    assert redact_overrides(arguments) == [
        "-m",
        f"+hub.token={REDACTED}",
        "beta=0.1",
        "judge.api_key_env=MY_KEY",
        f"++x.api_key={REDACTED}",
    ]


def _rendered(tree) -> str:
    console = Console(file=io.StringIO(), width=300, color_system=None)
    console.print(tree)
    return console.file.getvalue()


def test_config_tree_is_resolved_ordered_and_redacted(tmp_path, capsys):
    cfg = compose("trainer.max_steps=7", f"+hub.token={SECRET}", run_dir=tmp_path)
    text = _rendered(config_tree(cfg))
    assert f"save_dir: {tmp_path}" in text  # logger.save_dir: ${hydra:runtime.output_dir}, resolved
    assert "max_steps: 7" in text and "${" not in text
    assert f"token: {REDACTED}" in text and SECRET not in text
    branches = [line.split("── ")[1].strip() for line in text.splitlines() if line[:4] in ("├── ", "└── ")]
    groups = ["task", "model", "loss", "reference", "optimizer", "trainer", "logger"]
    assert branches[: len(groups)] == groups and "beta: 0.1" in branches and branches[-1] == "hub"

    print_config_tree(cfg)
    printed = capsys.readouterr().out
    assert "max_steps: 7" in printed and REDACTED in printed and SECRET not in printed


def test_saved_config_is_the_resolved_config(tmp_path):
    cfg = compose(f"+hub.token={SECRET}", "beta=0.3", run_dir=tmp_path)
    path = save_resolved_config(cfg, tmp_path / "run")
    expected = OmegaConf.to_container(cfg, resolve=True)
    expected["hub"]["token"] = REDACTED
    assert path == tmp_path / "run" / "config.yaml"
    saved = yaml.safe_load(path.read_text())
    assert saved == expected and saved["loss"]["beta"] == 0.3 and saved["logger"]["save_dir"] == str(tmp_path)


def test_progress_bar_choice(tmp_path):
    assert isinstance(progress_bar(compose(run_dir=tmp_path)), RichProgressBar)
    assert progress_bar(compose("progress_bar=tqdm", run_dir=tmp_path)) is None  # Lightning's default bar
    assert progress_bar(compose("trainer.enable_progress_bar=false", run_dir=tmp_path)) is None  # none at all
    with pytest.raises(ConfigError, match=r"^progress_bar: must be one of rich, tqdm, got 'fancy'$"):
        progress_bar(compose("progress_bar=fancy", run_dir=tmp_path))


def test_hydra_record_of_a_sweep_job_is_redacted(tmp_path):
    """The callback rewrites `.hydra/*.yaml` and the sweep's `multirun.yaml` (a single run: tested end to end)."""
    job = tmp_path / "0"
    (job / ".hydra").mkdir(parents=True)
    overrides = ["beta=0.1,0.5", f"+hub.token={SECRET}"]
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"beta": 0.1, "hub": {"token": SECRET}}))
    (tmp_path / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": {"task": overrides}}}))
    config = OmegaConf.create(
        {
            "beta": 0.1,
            "hub": {"token": SECRET},
            "hydra": {
                "mode": RunMode.MULTIRUN,
                "output_subdir": ".hydra",
                "runtime": {"output_dir": str(job)},
                "sweep": {"dir": str(tmp_path)},
            },
        }
    )
    RedactHydraOutput().on_job_start(config=config, task_function=None)
    redacted_overrides = ["beta=0.1,0.5", f"+hub.token={REDACTED}"]
    assert yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) == redacted_overrides
    assert yaml.safe_load((job / ".hydra" / "config.yaml").read_text()) == {"beta": 0.1, "hub": {"token": REDACTED}}
    assert yaml.safe_load((tmp_path / "multirun.yaml").read_text())["hydra"]["overrides"]["task"] == redacted_overrides


def test_redact_printed_config_keeps_the_printout_and_hides_secrets(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "env-" + SECRET)
    printed = OmegaConf.to_yaml({"beta": 0.1, "hub": {"token": SECRET}, "note": f"x=env-{SECRET}", "a": "???"})
    expected = OmegaConf.to_yaml({"beta": 0.1, "hub": {"token": REDACTED}, "note": f"x={REDACTED}", "a": "???"})
    assert redact_printed_config(printed) == expected
    assert redact_printed_config("# @package hub\n" + printed) == "# @package hub\n" + expected
    assert redact_printed_config(f"{SECRET}\n", [f"+hub.token={SECRET}"]) == f"{REDACTED}\n"  # one value


@pytest.mark.parametrize("shown", [["--cfg", "all"], ["-c", "job", "--package", "hub.token"]])
def test_cfg_printout_never_shows_a_command_line_secret(shown):
    token = "tok-" + secrets.token_hex(16)
    result = run_in_process(train_command.main, *shown, f"+hub.token={token}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert token not in result.stdout + result.stderr and REDACTED in result.stdout


def test_help_lists_every_group_and_option():
    result = run_in_process(train_command.main, "--help")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    groups = sorted(p.name for p in CONF_DIR.iterdir() if any(p.glob("*.yaml")) and p.name != "hydra")  # hydra: Hydra's
    for group in groups:
        options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        assert f"{group}: {', '.join(options)}" in lines, group
    for example in ("python train.py ", "task=hh model=gpt2", "-m beta=", "resume=auto", "--hydra-help"):
        assert example in result.stdout, example


def test_no_key_or_token_reaches_any_file_of_the_run_folder(tmp_path):
    """W&B key in the environment, a token on the command line: neither is in any file the run writes (Hydra's
    record, config.yaml, summary.json, train.log, W&B's offline run) nor in what it prints."""
    api_key, token = secrets.token_hex(20), "tok-" + secrets.token_hex(16)
    overrides = [o for o in SMALL if not o.startswith("trainer.enable_progress_bar")]  # the rich bar, not a tty
    overrides += ["samples.num_prompts=4", "samples.max_new_tokens=4", "logger=wandb", "logger.mode=offline"]
    result = train(*overrides, f"+hub.token={token}", run_dir=tmp_path, env=offline_env(WANDB_API_KEY=api_key))
    assert result.returncode == 0, result.stderr[-3000:]

    files = [path for path in tmp_path.rglob("*") if path.is_file()]
    names = {path.relative_to(tmp_path).as_posix() for path in files}
    assert {".hydra/overrides.yaml", ".hydra/hydra.yaml", ".hydra/config.yaml", "config.yaml", "train.log"} <= names
    assert any(name.endswith(".wandb") for name in names) and "summary.json" in names
    for path in files:
        content = path.read_bytes()
        assert api_key.encode() not in content and token.encode() not in content, path
    assert f"+hub.token={REDACTED}" in (tmp_path / ".hydra" / "overrides.yaml").read_text()
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["hub"] == {"token": REDACTED}
    output = result.stdout + result.stderr
    assert api_key not in output and token not in output and f"token: {REDACTED}" in result.stdout

    # The rich bar on a non-terminal: the finished bar printed once, with pairs/s, no carriage-return redraws.
    assert result.stdout.count("Epoch 0/0") == 1 and "train/pairs_per_s:" in result.stdout
    assert "\r" not in result.stdout
