"""logger=wandb never prompts or hangs: offline without credentials or a reachable server."""

import json
import socket

import pytest
from helpers import train, wandb_run_record
from omegaconf import OmegaConf

from dpo_lightning.conf import CONF_DIR
from dpo_lightning.errors import ConfigError
from dpo_lightning.runtime.wandb_logging import name_sweep_run, previous_run_id, resolve_mode, wandb_logger

SECRET = "0123456789abcdef0123456789abcdef01234567"  # a fake 40-character W&B key


@pytest.fixture
def no_netrc(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nothing listens once the socket is closed


def test_auto_without_credentials_is_offline(no_netrc):
    assert resolve_mode("auto") == "offline"


def test_auto_with_credentials_but_unreachable_server_is_offline(no_netrc, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{_closed_port()}")
    assert resolve_mode("auto") == "offline"


def test_auto_with_credentials_and_a_reachable_server_is_online(no_netrc, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert resolve_mode("auto") == "online"


def test_netrc_entry_counts_as_credentials(tmp_path, no_netrc, monkeypatch):
    (tmp_path / ".netrc").write_text(f"machine 127.0.0.1\n  login user\n  password {SECRET}\n")
    (tmp_path / ".netrc").chmod(0o600)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert resolve_mode("auto") == "online"


def test_explicit_modes_pass_through_and_bad_ones_fail():
    assert [resolve_mode(m) for m in ("online", "offline", "disabled")] == ["online", "offline", "disabled"]
    with pytest.raises(ConfigError, match=r"^logger\.mode: must be one of auto, online, offline, disabled"):
        resolve_mode("sometimes")


def test_wandb_run_goes_offline_into_the_run_folder_and_never_writes_the_key(tmp_path):
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "HF_HUB_OFFLINE": "1",
        "WANDB_API_KEY": SECRET,
        "WANDB_BASE_URL": f"http://127.0.0.1:{_closed_port()}",
    }
    run_dir = tmp_path / "run"
    overrides = [
        "logger=wandb",
        "task.source.num_train_pairs=32",
        "task.source.num_val_pairs=8",
        "data.batch_size=8",
        "trainer.max_steps=2",
        "trainer.enable_progress_bar=false",
        "samples.num_prompts=4",
        "samples.max_new_tokens=4",
    ]
    result = train(*overrides, run_dir=run_dir, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    offline_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1 and list(offline_runs[0].glob("*.wandb"))
    run = wandb_run_record(run_dir / "wandb")
    assert run.project == "dpo-lightning" and run.run_group == ""  # a single run: no group, a name W&B picks
    assert "logger=wandb" not in run.display_name
    (table,) = offline_runs[0].rglob("val/samples_*.table.json")  # the validation sample table
    content = json.loads(table.read_text())
    assert content["columns"][:3] == ["prompt", "policy", "reference"] and len(content["data"]) == 4
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in result.stdout + result.stderr


def test_a_sweep_job_joins_its_sweeps_group_and_is_named_by_its_overrides():
    logger = OmegaConf.load(CONF_DIR / "logger" / "wandb.yaml")
    name_sweep_run(logger, "outputs/multirun/2026-01-02/03-04-05", "beta=0.5,loss=ipo")
    assert (logger.group, logger.name) == ("outputs/multirun/2026-01-02/03-04-05", "beta=0.5,loss=ipo")
    chosen = OmegaConf.merge(OmegaConf.load(CONF_DIR / "logger" / "wandb.yaml"), {"group": "g", "name": "n"})
    name_sweep_run(chosen, "outputs/multirun/x", "beta=0.5")
    assert (chosen.group, chosen.name) == ("g", "n")  # set in the config: kept
    csv_logger = OmegaConf.load(CONF_DIR / "logger" / "csv.yaml")
    name_sweep_run(csv_logger, "outputs/multirun/x", "beta=0.5")
    assert csv_logger == OmegaConf.load(CONF_DIR / "logger" / "csv.yaml")  # not W&B: unchanged


def test_a_resumed_run_logs_into_its_earlier_wandb_run(tmp_path):
    earlier = tmp_path / "wandb" / "offline-run-20261123_101500-k3x9q2ab"
    earlier.mkdir(parents=True)
    (tmp_path / "wandb" / "latest-run").symlink_to(earlier.name)
    assert previous_run_id(tmp_path) == "k3x9q2ab"
    resumed = wandb_logger("dpo-lightning", str(tmp_path), mode="offline", continue_run="auto")
    assert resumed.version == "k3x9q2ab"  # the W&B run id, before the run starts
    assert wandb_logger("dpo-lightning", str(tmp_path), mode="offline").version is None  # a fresh run: W&B's new id
    assert previous_run_id(tmp_path / "elsewhere") is None
