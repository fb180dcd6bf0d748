"""Checkpoints (safetensors, atomic), resume=auto after SIGKILL and SIGTERM, the data position, divergence."""

import csv
import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ROOT, SMALL, offline_env, read_summary, train
from safetensors.torch import load_file

from dpo_lightning.data.sampler import ResumableSampler, ShuffledSampler
from dpo_lightning.errors import ConfigError
from dpo_lightning.runtime import checkpoints as checkpointing
from dpo_lightning.runtime.checkpoints import CheckpointError, load_checkpoint_file, save_checkpoint_file
from dpo_lightning.runtime.resume import resume_arguments

# helpers.SMALL's short tiny-model run, checkpointing after every optimizer step, with 2 micro-batches a step
# (a signal can arrive between the micro-batches of one step), no validation inside the run, no sampling.
RUN = [
    *(override for override in SMALL if not override.startswith("trainer.val_check_interval")),
    "trainer.accumulate_grad_batches=2",
    "trainer.val_check_interval=100",
    "samples.num_prompts=0",
    "checkpoint.every_n_train_steps=1",
    "logger=none",
]
ENV = offline_env()


# --- the checkpoint file --------------------------------------------------------------------------------


def test_a_checkpoint_round_trips_every_kind_of_value(tmp_path):
    weights = torch.randn(3, 4)
    checkpoint = {
        "state_dict": {"policy.w": weights, "policy.tied": weights},  # shared storage is stored twice
        "optimizer_states": [{"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"betas": (0.9, 0.99)}]}],
        "rng": (3, (1, 2, 3), None, np.arange(5, dtype=np.uint32)),
        "loops": {"epoch": 2, "done": True, "lr": 1e-3, "name": "x", "nothing": None, "__odd": 1},
    }
    path = tmp_path / "last.ckpt"
    save_checkpoint_file(checkpoint, path)
    loaded = load_checkpoint_file(path)
    assert torch.equal(loaded["state_dict"]["policy.w"], weights)
    assert torch.equal(loaded["state_dict"]["policy.tied"], weights)
    assert loaded["optimizer_states"][0]["state"][0]["step"].item() == 3.0  # int key kept
    assert loaded["optimizer_states"][0]["param_groups"][0]["betas"] == (0.9, 0.99)  # tuple kept
    assert loaded["rng"][:3] == (3, (1, 2, 3), None)
    assert np.array_equal(loaded["rng"][3], np.arange(5, dtype=np.uint32)) and loaded["rng"][3].dtype == np.uint32
    assert loaded["loops"] == checkpoint["loops"]
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_value_without_a_safe_form_is_an_error_naming_where_it_is(tmp_path):
    with pytest.raises(CheckpointError, match=r"cannot store object at checkpoint\.callbacks\.x"):
        save_checkpoint_file({"callbacks": {"x": object()}}, tmp_path / "c.ckpt")


def test_a_pickled_checkpoint_is_never_loaded(tmp_path):
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(CheckpointError, match=r"old\.ckpt: not a dpo-lightning safetensors checkpoint"):
        load_checkpoint_file(path)


def test_a_full_disk_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    save_checkpoint_file({"step": 1, "w": torch.ones(2)}, path)
    before = path.read_bytes()

    def full_disk(descriptor):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpointing.os, "fsync", full_disk)
    with pytest.raises(CheckpointError) as raised:
        save_checkpoint_file({"step": 2, "w": torch.zeros(2)}, path)
    assert (
        str(raised.value)
        == f"{path}: could not save the checkpoint (No space left on device); the previous one is intact"
    )
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


# --- the data position ----------------------------------------------------------------------------------


def test_a_resumed_epoch_continues_the_same_order_once():
    sampler = ResumableSampler(ShuffledSampler(20, seed=3))
    sampler.set_epoch(1)
    whole = list(sampler)
    resumed = ResumableSampler(ShuffledSampler(20, seed=3))
    resumed.resume_at(epoch=1, skip=8)
    resumed.set_epoch(1)
    assert list(resumed) == whole[8:]
    assert list(resumed) == whole  # a second pass over the epoch is whole
    resumed.set_epoch(2)
    assert list(resumed) != whole and sorted(resumed) == list(range(20))
    for rank in range(3):  # DDP: each rank skips within its own share (21 = 20 padded to 3 × 7)
        share = ResumableSampler(ShuffledSampler(20, seed=3), num_replicas=3, rank=rank)
        share.set_epoch(1)
        assert list(share) == (whole + whole[:1])[rank::3]
        share.resume_at(epoch=1, skip=2)
        assert list(share) == (whole + whole[:1])[rank::3][2:]


# --- resume= on the command line ------------------------------------------------------------------------


def _fake_run(outputs: Path, stamp: str, overrides: list[str], status: str | None, checkpoint: bool = True) -> Path:
    folder = outputs / stamp
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if checkpoint:
        (folder / "checkpoints").mkdir()
        (folder / "checkpoints" / "last.ckpt").write_bytes(b"")
    if status is not None:
        (folder / "summary.json").write_text(json.dumps({"status": status}))
    return folder


def test_resume_auto_picks_the_latest_unfinished_run_of_the_same_command(tmp_path):
    outputs = tmp_path / "outputs"
    command = ["beta=0.5", "loss=ipo"]
    _fake_run(outputs, "2026-11-20/10-00-00", command, "failed")
    wanted = _fake_run(outputs, "2026-11-21/09-00-00", command, None)  # killed: no summary
    _fake_run(outputs, "2026-11-21/10-00-00", command, "completed")
    _fake_run(outputs, "2026-11-21/11-00-00", ["beta=0.1", "loss=ipo"], "preempted")  # another command
    _fake_run(outputs, "2026-11-21/12-00-00", command, "preempted", checkpoint=False)
    assert resume_arguments([*command, "resume=auto"], outputs) == [*command, "resume=auto", f"hydra.run.dir={wanted}"]
    assert resume_arguments(["beta=0.9", "resume=auto"], outputs) == ["beta=0.9", "resume=auto"]  # nothing: fresh
    assert resume_arguments(["-m", *command, "resume=auto"], outputs) == ["-m", *command, "resume=auto"]
    with pytest.raises(ConfigError, match=r"^resume: .*nowhere is not a run folder with checkpoints/last.ckpt"):
        resume_arguments([f"resume={tmp_path / 'nowhere'}"], outputs)


# --- end to end: interrupt, resume, compare with an uninterrupted run ---------------------------------------


def _start(cwd: Path, *overrides: str) -> subprocess.Popen:
    command = [sys.executable, str(ROOT / "train.py"), *RUN, *overrides]
    return subprocess.Popen(command, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(process: subprocess.Popen, timeout: int = 300) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-3000:]
    return output


def _interrupt_at(cwd: Path, step: int, signal_number: int, *overrides: str) -> Path:
    """Start the run in `cwd`, send the signal once the checkpoint of `step` is written; its run folder."""
    process = _start(cwd, *overrides)
    deadline = time.monotonic() + 300
    while not list(cwd.glob(f"outputs/*/*/checkpoints/epoch=0-step={step}.ckpt")):
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before the signal"
        time.sleep(0.05)
    process.send_signal(signal_number)
    process.communicate(timeout=120)
    (folder,) = cwd.glob("outputs/*/*")
    return folder


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "policy" / "model.safetensors")


def _uninterrupted(cwd: Path, *overrides: str) -> dict[str, torch.Tensor]:
    _finish(_start(cwd, *overrides))
    (folder,) = cwd.glob("outputs/*/*")
    return _weights(folder)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[str, torch.Tensor]:
    return _uninterrupted(tmp_path_factory.mktemp("uninterrupted"))


@pytest.mark.parametrize("signal_number", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_an_interrupted_run_resumed_ends_bitwise_equal_to_an_uninterrupted_one(signal_number, uninterrupted, tmp_path):
    # A random step ≥ 2: the process dies during step + 1 or a checkpoint write — possibly between the step's own
    # file and last.ckpt, so a last.ckpt of an earlier step must exist (after step 1 alone, there may be none).
    step = random.randint(2, 4)
    folder = _interrupt_at(tmp_path, step, signal_number)
    summary = folder / "summary.json"
    if signal_number == signal.SIGTERM:  # saved and stopped cleanly, at an optimizer-step boundary
        assert json.loads(summary.read_text())["status"] == "preempted", f"step {step}"
    else:  # killed: no summary, and never a half-written last.ckpt
        assert not summary.exists(), f"step {step}"
        load_checkpoint_file(folder / "checkpoints" / "last.ckpt")
    output = _finish(_start(tmp_path, "resume=auto"))
    assert f"continuing from {folder / 'checkpoints' / 'last.ckpt'}" in output, f"step {step}"
    assert json.loads(summary.read_text())["status"] == "completed"
    resumed = _weights(folder)
    for name, weights in uninterrupted.items():
        assert torch.equal(resumed[name], weights), f"{name} differs after resuming from step {step}"


DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]
STREAMING = ["task.streaming=true", "data.num_workers=2"]


@pytest.mark.slow  # three more runs each
@pytest.mark.parametrize(
    ("overrides", "signal_number"),
    [(STREAMING, signal.SIGKILL), (DDP, signal.SIGTERM), ([*DDP, *STREAMING], signal.SIGTERM)],
    ids=["streaming-SIGKILL", "ddp-SIGTERM", "ddp-streaming-SIGTERM"],
)
def test_streaming_and_ddp_runs_resume_bitwise_equal(overrides, signal_number, tmp_path):
    (tmp_path / "whole").mkdir()
    whole = _uninterrupted(tmp_path / "whole", *overrides)
    folder = _interrupt_at(tmp_path, 2, signal_number, *overrides)
    _finish(_start(tmp_path, *overrides, "resume=auto"))
    resumed = _weights(folder)
    assert all(torch.equal(resumed[name], whole[name]) for name in whole)


ONLINE = ["algorithm=online", "algorithm.samples_per_prompt=2", "algorithm.sampling.max_new_tokens=8"]


def test_an_online_run_killed_and_resumed_ends_bitwise_equal_with_the_same_rollouts(tmp_path):
    """Rollouts are drawn again after a resume: the same samples (draw numbers follow the restored step), labels
    and weights as the uninterrupted run; two micro-batches a step (RUN), so the draw numbers are per micro-batch."""
    (tmp_path / "whole").mkdir()
    whole = _uninterrupted(tmp_path / "whole", *ONLINE)
    step = random.randint(2, 4)
    folder = _interrupt_at(tmp_path, step, signal.SIGKILL, *ONLINE)
    _finish(_start(tmp_path, *ONLINE, "resume=auto"))
    resumed = _weights(folder)
    assert all(torch.equal(resumed[name], whole[name]) for name in whole), f"differs after resuming from step {step}"
    (whole_folder,) = (tmp_path / "whole").glob("outputs/*/*")
    assert read_summary(folder)["rollouts"] == read_summary(whole_folder)["rollouts"]


ITERATIVE = [
    "algorithm=iterative",
    "algorithm.rounds=2",
    "algorithm.prompts_per_round=16",
    "algorithm.validation_prompts=8",
    "algorithm.samples_per_prompt=4",
    "algorithm.sampling.max_new_tokens=8",
    "samples.num_prompts=4",
    "samples.max_new_tokens=8",
]


def test_iterative_dpo_killed_in_its_second_round_resumes_that_round_and_ends_bitwise_equal(tmp_path):
    """Round 1 is kept as it is (not sampled or trained again), round 2 continues from its last.ckpt, and the rounds
    table and the final policy equal an uninterrupted command's."""
    (tmp_path / "whole").mkdir()
    _finish(_start(tmp_path / "whole", *ITERATIVE))
    (whole,) = (tmp_path / "whole").glob("outputs/*/*")
    process = _start(tmp_path, *ITERATIVE)
    deadline = time.monotonic() + 300
    while not list(tmp_path.glob("outputs/*/*/round_2/checkpoints/epoch=0-step=2.ckpt")):
        assert process.poll() is None and time.monotonic() < deadline, "the command ended before the signal"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=120)
    (folder,) = tmp_path.glob("outputs/*/*")
    first_round = (folder / "round_1" / "summary.json").stat().st_mtime_ns
    output = _finish(_start(tmp_path, *ITERATIVE, "resume=auto"))
    assert f"continuing from {folder / 'round_2' / 'checkpoints' / 'last.ckpt'}" in output
    assert (folder / "round_1" / "summary.json").stat().st_mtime_ns == first_round  # round 1 kept
    assert read_summary(folder)["status"] == "completed"
    rounds = [
        [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader((run / "rounds.csv").open())]
        for run in (folder, whole)
    ]  # rewards and KL of every round, wall-clock aside
    assert rounds[0] == rounds[1] and len(rounds[0]) == 3
    resumed, uninterrupted = _weights(folder / "round_2"), _weights(whole / "round_2")
    assert all(torch.equal(resumed[name], uninterrupted[name]) for name in uninterrupted)


# --- divergence -----------------------------------------------------------------------------------------


def test_a_diverging_run_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    result = train(*RUN, "optimizer.lr=1e30", run_dir=tmp_path, env=ENV)
    assert result.returncode == 1, result.stderr[-3000:]
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("error: training diverged at step ") and "non-finite" in error, error
    assert f"last checkpoint: {tmp_path / 'checkpoints' / 'last.ckpt'}" in error
    summary = read_summary(tmp_path)
    assert summary["status"] == "failed" and summary["error"].startswith("DivergenceError: training diverged")
    last = load_checkpoint_file(tmp_path / "checkpoints" / "last.ckpt")
    assert last["global_step"] == summary["global_step"]  # saved after the last good step, not after the bad one
    assert all(torch.isfinite(w).all() for w in last["state_dict"].values())


# PPO steps the optimizer itself (manual optimization; accumulate_grad_batches > 1 is refused in one line): RUN's two
# micro-batches a step become one rollout of 8 prompts a Lightning step, 2 minibatches of 4 = 2 optimizer steps.
PPO = ["algorithm=ppo", "algorithm.mini_batch_size=4", "algorithm.ppo_epochs=1", "algorithm.sampling.max_new_tokens=8",
       "trainer.accumulate_grad_batches=1", "trainer.max_steps=8"]  # fmt: skip


def test_a_ppo_run_killed_and_resumed_ends_bitwise_equal(tmp_path):
    """Rollouts are drawn again after a resume (the sampling seed and the minibatch order follow the restored
    rollout count): the same weights, value head and KL controller as the uninterrupted run, and the same counts.
    Checkpoints come after whole rollouts only, at optimizer steps 2, 4, 6 and 8: killed once step 4's or 6's is
    written (a last.ckpt exists then, of that step or the one before; after the first alone there may be none)."""
    (tmp_path / "whole").mkdir()
    whole = _uninterrupted(tmp_path / "whole", *PPO)
    step = random.choice([4, 6])
    folder = _interrupt_at(tmp_path, step, signal.SIGKILL, *PPO)
    assert not (folder / "summary.json").exists(), f"step {step}"
    killed_at = load_checkpoint_file(folder / "checkpoints" / "last.ckpt")["ppo"]["rollouts_done"]
    assert killed_at in (step // 2, step // 2 - 1), f"step {step}"  # the rollouts of last.ckpt: `step`'s or before
    output = _finish(_start(tmp_path, *PPO, "resume=auto"))
    assert f"continuing from {folder / 'checkpoints' / 'last.ckpt'}" in output, f"step {step}"
    resumed = _weights(folder)
    assert all(torch.equal(resumed[name], whole[name]) for name in whole), f"differs after resuming from step {step}"
    (whole_folder,) = (tmp_path / "whole").glob("outputs/*/*")
    summaries = read_summary(folder), read_summary(whole_folder)
    assert summaries[0]["status"] == "completed" and summaries[0]["global_step"] == 8
    assert summaries[0]["rollouts"] == summaries[1]["rollouts"]
    assert summaries[0]["rollouts"]["counts"]["prompts"] == 4 * 8
    for name in ("train/kl_coef", "train/kl", "train/reward", "train/value_loss"):  # the last rollout's, equal
        assert summaries[0]["metrics"][name] == summaries[1]["metrics"][name], name
    finals = [load_checkpoint_file(run / "checkpoints" / "last.ckpt") for run in (folder, whole_folder)]
    assert finals[0]["ppo"] == finals[1]["ppo"] and finals[0]["ppo"]["rollouts_done"] == 4
    for name in ("value_head.weight", "value_head.bias"):
        assert torch.equal(finals[0]["state_dict"][name], finals[1]["state_dict"][name]), name
