"""`policy/README.md`: the model card, with the Hub's YAML metadata header, written by every run that exports."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from helpers import FIXTURES, compose, offline_env, read_summary, train, write_jsonl
from omegaconf import OmegaConf

from dpo_lightning.instantiate import build
from dpo_lightning.runtime.export import hub_dataset, write_model_card

SECRET = "hf_NotARealTokenButSecret42"
ENV_SECRET = "hf_FromTheEnvironment99"
METRICS = {"val/loss": 0.61234, "val/rewards/accuracies": 0.75, "val/reward": 0.5, "val/kl": 1.25, "train/loss": 9.0}


def _card(folder: Path) -> tuple[dict, str]:
    """(the YAML header, the body) of `folder/README.md`."""
    text = (folder / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    _, header, body = text.split("---\n", 2)
    return yaml.safe_load(header), body


def _write(tmp_path: Path, overrides: list[str], argv: list[str] | None = None, metrics=None) -> tuple[dict, str]:
    cfg = compose(*overrides, run_dir=tmp_path)
    choices = {"loss": "dpo", "reference": "model"}
    for override in overrides:  # the group options, as Hydra records them
        group, _, option = override.partition("=")
        if group in ("loss", "reference"):
            choices[group] = option
    config = OmegaConf.to_container(cfg, resolve=True)
    summary = {"config": config, "choices": choices, "metrics": METRICS if metrics is None else metrics}
    folder = tmp_path / "policy"
    folder.mkdir(exist_ok=True)
    write_model_card(folder, summary, build(cfg.task.source, "task.source"), argv or ["train.py"])
    return _card(folder)


def test_card_header_follows_the_config(tmp_path):
    header, body = _write(tmp_path, ["task=tldr", "model=gptj", "loss=ipo", "beta=0.5", "reference=precomputed"])
    cfg = compose("task=tldr", "model=gptj", run_dir=tmp_path)
    assert header == {
        "base_model": cfg.model.name_or_path,  # EleutherAI/gpt-j-6b
        "datasets": [cfg.task.source.path],  # openai/summarize_from_feedback
        "tags": ["dpo", "dpo-lightning", "ipo"],
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
    }
    assert "- Objective: `ipo` (`dpo_lightning.losses.ipo.IPO`), β = 0.5" in body
    assert "- Reference (π_ref): `precomputed` — the initial policy's log-probabilities" in body
    for line in ("| `val/loss` | 0.6123 |", "| `val/rewards/accuracies` | 0.7500 |", "| `val/kl` | 1.2500 |"):
        assert line in body
    assert "train/loss" not in body  # final validation metrics only


def test_tiny_model_on_generated_data_has_no_base_model_and_no_datasets(tmp_path):
    header, body = _write(tmp_path, [], metrics={"val/loss": 0.69})
    assert header == {
        "tags": ["dpo", "dpo-lightning"],
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
    }
    assert "a random initialisation" in body and "task `sentiment`" in body
    assert "val/reward`" not in body  # metrics the run does not have are left out


def test_hub_task_read_from_local_files_names_no_dataset(tmp_path):
    fixtures = FIXTURES / "tldr"
    files = [f"task.source.data_files.{split}={fixtures / f'{split}.jsonl'}" for split in ("train", "validation")]
    header, _ = _write(tmp_path, ["task=tldr", *files])
    assert "datasets" not in header
    cfg = compose("task=tldr", files[0], run_dir=tmp_path)  # validation still from the hub: the hub dataset was read
    assert hub_dataset(build(cfg.task.source, "task.source")) == "openai/summarize_from_feedback"


def test_local_data_names_no_dataset_and_init_from_is_the_base_model(tmp_path):
    run = tmp_path / "sft-run"
    (run / "policy").mkdir(parents=True)
    (run / "policy" / "config.json").write_text("{}")
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": "c", "rejected": "r"}] * 4)
    header, body = _write(
        tmp_path, ["task=local", f"task.source.path={pairs}", "model=gpt2", f"+model.init_from={run}"]
    )
    assert header["base_model"] == str(run)
    assert "datasets" not in header
    assert f"trained from `{run}`" in body


def test_the_command_is_written_as_given_quoted_for_a_shell(tmp_path):
    """Quoted, so that it can be pasted into a shell."""
    _, body = _write(tmp_path, [], argv=["/somewhere/train.py", "beta=0.2", "+note=two words", "+hub.token=<redacted>"])
    assert "```bash\npython train.py beta=0.2 '+note=two words' '+hub.token=<redacted>'\n```" in body
    _, body = _write(tmp_path, [], argv=["/venv/bin/dpo-train", "beta=0.2"])
    assert "```bash\ndpo-train beta=0.2\n```" in body


def test_no_secret_given_to_the_card_reaches_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", ENV_SECRET)
    argv = ["train.py", f"+hub.token={SECRET}", f"+logger.api_key={SECRET}x", f"+note=uses {ENV_SECRET} inside"]
    _, body = _write(tmp_path, ["beta=0.2"], argv=[*argv, "beta=0.2"])
    text = (tmp_path / "policy" / "README.md").read_text()
    assert SECRET not in text and ENV_SECRET not in text
    redacted = "python train.py '+hub.token=<redacted>' '+logger.api_key=<redacted>' '+note=uses <redacted> inside'"
    assert f"{redacted} beta=0.2\n" in body


def test_a_real_run_exports_its_model_card(tmp_path):
    """One short run of the default offline demo (~20 s): policy/README.md next to the weights, no secret given on
    the command line in it."""
    run_dir = tmp_path / "run"
    overrides = [
        "trainer.max_steps=2",
        "task.source.num_train_pairs=32",
        "task.source.num_val_pairs=8",
        "samples.num_prompts=0",
        "trainer.enable_progress_bar=false",
        f"+hub.token={SECRET}",  # a secret-looking key: its value is redacted
        f"+note={ENV_SECRET}",  # the value of a secret environment variable: redacted wherever it appears
    ]
    result = train(*overrides, run_dir=run_dir, env=offline_env(HF_TOKEN=ENV_SECRET), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = read_summary(run_dir)
    header, body = _card(run_dir / "policy")
    assert header == {
        "tags": ["dpo", "dpo-lightning"],
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
    }
    assert f"| `val/loss` | {summary['metrics']['val/loss']:.4f} |" in body
    assert "- Objective: `dpo` (`dpo_lightning.losses.dpo.DPO`), β = 0.1" in body
    assert "trainer.max_steps=2" in body and "'+hub.token=<redacted>'" in body and "'+note=<redacted>'" in body
    texts = [path for path in (run_dir / "policy").iterdir() if path.suffix != ".safetensors"]
    assert not any(secret in path.read_text() for path in texts for secret in (SECRET, ENV_SECRET))


@pytest.mark.parametrize("reference", ["model", "none"])
def test_reference_strategy_is_described(tmp_path, reference):
    _, body = _write(tmp_path, [f"reference={reference}"])
    expected = "a frozen copy of the initial policy" if reference == "model" else "reference-free"
    assert f"- Reference (π_ref): `{reference}` — " in body and expected in body
