"""Scale: DDP and FSDP2 reproduce one process, sharded checkpoints resume, precision, activation checkpointing,
torchrun and SLURM launches, the config checks. CPU only (gloo), 2 processes.

What is exactly comparable between 1 and 2 processes. The map-style loader shuffles differently with one
process (RandomSampler) and with several (DistributedSampler), so the end-to-end comparisons stream a local
file unshuffled: step k's global batch is rows 8k..8k+7 whatever the process count (streaming.py deals
chunks round-robin). Each global batch holds 4 pairs twice (rows 8k..8k+3 = rows 8k+4..8k+7), so every
rank's micro-batch has the same mean loss as the global batch: the `train/*` values rank 0 logs per step are
the global-batch values the 1-process run logs. Gradients are averaged over ranks (DDP all-reduce, FSDP
reduce-scatter), so the same weights follow; what differs is only the summation order of float32 reductions.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import PAD, ROOT, compose, offline_env, random_pairs, read_summary, tiny_causal_lm, train, write_jsonl
from omegaconf import OmegaConf
from safetensors.torch import load_file
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Shard
from transformers import AutoModelForCausalLM

from dpo_lightning.data.collate import collate_padded
from dpo_lightning.errors import ConfigError
from dpo_lightning.models.loading import build_model, check_model_config, transformer_blocks
from dpo_lightning.models.logprobs import sequence_logprobs
from dpo_lightning.models.sharding import full_state_dict, shard_causal_lm
from dpo_lightning.models.tiny_tokenizer import load_tiny_tokenizer
from dpo_lightning.runtime.export import export_policy
from dpo_lightning.runtime.trainer import check_trainer_config
from dpo_lightning.training.module import DPOLitModule

# float32 runs of the same global batches, 1 process vs 2 (DDP, FSDP). Measured: per-step train/* within 5e-7
# relative (7.6e-6 absolute, on log-probs around -16), final val/* within 6e-8, exported weights within 9e-6
# (AdamW divides by √v, which magnifies last-bit differences of near-zero gradients); DDP and FSDP agree
# bitwise. The tolerances leave about 10× headroom.
METRIC_TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}
WEIGHT_TOLERANCE = {"rtol": 0.0, "atol": 1e-4}
COMPARED = (
    "loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
)


def _plain(cfg, key: str) -> dict:
    return OmegaConf.to_container(cfg[key], resolve=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- precision and activation checkpointing (one process) ---------------------------------------------------


def test_bf16_model_logprobs_are_summed_in_fp32_and_match_fp64_from_the_same_logits():
    model = tiny_causal_lm("llama", dtype=torch.bfloat16)
    batch = collate_padded(random_pairs(6), PAD)
    with torch.no_grad():
        logps, _ = sequence_logprobs(model, batch)
        hidden = model.get_decoder()(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=False,
        ).last_hidden_state
        logits = model.get_output_embeddings()(hidden[batch.target_rows, batch.target_positions])  # [N, V] bf16
    assert logits.dtype == torch.bfloat16 and logps.dtype == torch.float32

    def summed(log_softmax: torch.Tensor) -> torch.Tensor:
        token_logps = log_softmax.gather(-1, batch.target_ids[:, None]).squeeze(-1)
        return torch.zeros(2 * batch.num_pairs, dtype=token_logps.dtype).index_add(0, batch.target_seqs, token_logps)

    exact = summed(logits.double().log_softmax(-1))  # fp64 from the very same bf16 logits
    torch.testing.assert_close(logps.double(), exact, rtol=0, atol=1e-4)
    # The tolerance is sharp enough to catch bf16 log-softmax math, which is off by orders of magnitude more.
    assert (summed(logits.log_softmax(-1)).double() - exact).abs().max() > 1e-2


def _tiny_model_config(**changes) -> dict:
    return {**_plain(compose(), "model"), **changes}


def _gradients(model, batch) -> tuple[dict[str, torch.Tensor], int]:
    """Gradients of the summed log-probs, and how many tensors autograd kept for backward outside
    checkpointed regions."""
    saved = 0

    def pack(tensor):
        nonlocal saved
        saved += 1
        return tensor

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        logps, _ = sequence_logprobs(model, batch)
    logps.sum().backward()
    return {name: p.grad for name, p in model.named_parameters()}, saved


def test_activation_checkpointing_recomputes_blocks_and_gives_the_same_gradients():
    batch = collate_padded(random_pairs(6), PAD)
    plain, kept_plain = _gradients(build_model(_tiny_model_config()), batch)
    checkpointed_model = build_model(_tiny_model_config(activation_checkpointing=True))
    checkpointed, kept_checkpointed = _gradients(checkpointed_model, batch)
    assert all(block.gradient_checkpointing for block in transformer_blocks(checkpointed_model, "LlamaDecoderLayer"))
    assert kept_checkpointed < kept_plain / 2  # block activations are recomputed, not kept
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=0, atol=0, msg=name)


# --- FSDP2 sharding in-process: 2 gloo processes ------------------------------------------------------------

SGD = {"_target_": "torch.optim.SGD", "lr": 0.5, "warmup_steps": 0}  # weights follow gradients linearly


def _module(cfg, model_config: dict) -> DPOLitModule:
    return DPOLitModule(model=model_config, loss=_plain(cfg, "loss"), optimizer=SGD, reference=_plain(cfg, "reference"))


class _TrainingStep(torch.nn.Module):
    """What Lightning hands to DDP: a module whose forward is the training step."""

    def __init__(self, module: DPOLitModule) -> None:
        super().__init__()
        self.module = module

    def forward(self, batch):
        return self.module.training_step(batch, 0)


def _worker(rank: int, port: int, folder: Path) -> None:
    """One of 2 ranks: a training step on this rank's half of a batch of 8 pairs under FSDP2 (with and without
    activation checkpointing) and under DDP; an SGD step, the gathered and exported policy; a tied model."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        mesh = init_device_mesh("cpu", (2, 1), mesh_dim_names=("data_parallel", "tensor_parallel"))
        cfg = compose()
        batch = collate_padded(random_pairs(8)[4 * rank : 4 * rank + 4], PAD)  # this rank's half of the batch
        results = {}
        for variant in ("ddp", "fsdp+checkpointing", "fsdp"):
            module = _module(cfg, _tiny_model_config(activation_checkpointing=variant == "fsdp+checkpointing"))
            if variant != "ddp":
                module._device_mesh = mesh  # what ModelParallelStrategy sets before configure_model
            module.configure_model()
            module.train()
            if variant == "ddp":
                ddp = torch.nn.parallel.DistributedDataParallel(_TrainingStep(module))  # alive through backward
                ddp(batch).backward()
            else:
                module.training_step(batch, 0).backward()
            policy, reference = module.policy, module.reference.model
            results[variant] = {
                "grads": {
                    n: p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad
                    for n, p in policy.named_parameters()
                },
                "sharded": all(isinstance(p, DTensor) and p.placements == (Shard(0),) for p in policy.parameters())
                and all(isinstance(p, DTensor) for p in reference.parameters()),
                "separate": not {id(p) for p in policy.parameters()} & {id(p) for p in reference.parameters()},
                "reference_frozen": all(not p.requires_grad and p.grad is None for p in reference.parameters()),
            }
        optimizers = module.configure_optimizers()  # keep the scheduler alive: it wraps optimizer.step
        optimizers["optimizer"].step()
        gathered = full_state_dict(module.policy)  # every rank; full on rank 0 only
        # A tied model (GPT-2 shares its token embedding with the LM head) shards, gathers and exports too.
        tied = tiny_causal_lm("gpt2")
        shard_causal_lm(tied, mesh["data_parallel"], "GPT2Block")
        tied_state = full_state_dict(tied)
        if rank == 0:
            torch.save({"results": results, "gathered": gathered}, folder / "results.pt")  # save_pretrained empties it
            export_policy(module.policy, load_tiny_tokenizer(), folder / "policy", gathered)
            export_policy(tied, load_tiny_tokenizer(), folder / "tied", tied_state)
        dist.barrier()  # no rank leaves (closing its connections) while another still works
    finally:
        dist.destroy_process_group()


@pytest.mark.filterwarnings(r"ignore:You are trying to `self.log\(\)`")
def test_ddp_and_fsdp_gradients_equal_one_process_and_never_reach_the_reference(tmp_path):
    mp.spawn(_worker, args=(_free_port(), tmp_path), nprocs=2)
    saved = torch.load(tmp_path / "results.pt", weights_only=True)

    # One process, the whole batch of 8 pairs: the same gradient and SGD step.
    single = _module(compose(), _tiny_model_config())
    single.configure_model()
    single.train()
    single.training_step(collate_padded(random_pairs(8), PAD), 0).backward()
    expected = {n: p.grad.clone() for n, p in single.policy.named_parameters()}
    assert not any(p.requires_grad or p.grad is not None for p in single.reference.parameters())
    optimizers = single.configure_optimizers()
    optimizers["optimizer"].step()

    assert saved["results"].keys() == {"ddp", "fsdp", "fsdp+checkpointing"}
    for variant, result in saved["results"].items():
        assert result["separate"] and result["reference_frozen"], variant
        assert result["sharded"] == variant.startswith("fsdp"), variant  # policy and reference, in separate units
        assert result["grads"].keys() == expected.keys()
        for name, grad in expected.items():  # measured: within 1e-8
            torch.testing.assert_close(result["grads"][name], grad, rtol=1e-5, atol=1e-7, msg=(variant, name))

    # The export is a normal Hugging Face model holding exactly the gathered weights (after the FSDP SGD step).
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "policy", local_files_only=True)
    assert type(exported).__name__ == "LlamaForCausalLM"
    exported_state = exported.state_dict()
    assert saved["gathered"].keys() == exported_state.keys()
    for name, weight in saved["gathered"].items():
        assert torch.equal(exported_state[name], weight), name
        torch.testing.assert_close(weight, single.policy.state_dict()[name], rtol=0, atol=1e-6, msg=name)
    tied = AutoModelForCausalLM.from_pretrained(tmp_path / "tied", local_files_only=True)
    assert tied.lm_head.weight.data_ptr() == tied.transformer.wte.weight.data_ptr()
    for name, weight in tiny_causal_lm("gpt2").state_dict().items():
        assert torch.equal(tied.state_dict()[name], weight), name


# --- end to end: `python train.py` with 1 and 2 processes ---------------------------------------------------


def _duplicated_half_batches(folder: Path, steps: int = 4, unique: int = 4, ranked: bool = False) -> list[str]:
    """Local training/validation files whose global batches of 8 hold 4 pairs twice (see the module docstring),
    and the overrides that stream them unshuffled. `ranked`: rankings of three responses instead of pairs."""
    rows = []
    for step in range(steps):
        block = [
            {
                "prompt": f"Review {step}.{i}: the film",
                "chosen": f" was {'wonderful' if i % 2 else 'moving'}, {step + i} scenes shine",
                "rejected": f" was dull and {'long' if i % 2 else 'flat'}{' and loud' * (i % 3)}",
            }
            for i in range(unique)
        ]
        if ranked:
            block = [
                {
                    "prompt": row["prompt"],
                    "responses": [row["rejected"], row["chosen"], " was fine"],
                    "scores": [0, 2, 1],
                }
                for row in block
            ]
        rows += block + block
    write_jsonl(folder / "train.jsonl", rows)
    write_jsonl(folder / "val.jsonl", rows[::2])
    return [
        "task=local",
        f"task.source.path={folder / 'train.jsonl'}",
        f"task.source.val_path={folder / 'val.jsonl'}",
        "task.streaming=true",
        "task.shuffle_buffer=0",
        "data.batch_size=8",
        "data.eval_batch_size=4",
        "trainer.max_steps=3",
        "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false",
        "trainer.accelerator=cpu",
        *(["task.source.responses_column=responses"] if ranked else []),
    ]


def _train_steps(run_dir: Path) -> dict[int, dict[str, float]]:
    """{step: {name: value}} of the `train/*` values in csv/metrics.csv."""
    with (run_dir / "csv" / "metrics.csv").open() as file:
        rows = [row for row in csv.DictReader(file) if row.get("train/loss")]
    return {int(row["step"]): {k: float(v) for k, v in row.items() if k.startswith("train/") and v} for row in rows}


def _completed(result: subprocess.CompletedProcess, run_dir: Path, steps: int) -> dict:
    assert result.returncode == 0, result.stderr[-3000:]
    summary = read_summary(run_dir)
    assert summary["status"] == "completed" and summary["global_step"] == steps, summary.get("error")
    return summary


def _assert_same_weights(run_a: Path, run_b: Path, **tolerance) -> None:
    a, b = (load_file(run / "policy" / "model.safetensors") for run in (run_a, run_b))
    assert a.keys() == b.keys() and len(a) > 10
    for name in a:
        torch.testing.assert_close(a[name], b[name], **tolerance, msg=name)


@pytest.mark.slow  # slow: three training runs, two of them 2-process (~50 s), runs with -m slow
def test_ddp_and_fsdp_reproduce_the_one_process_run(tmp_path):
    """CI checks the same equality in-process (test_ddp_and_fsdp_gradients_equal_one_process_and_never_reach_the_
    reference: DDP and FSDP2 gradients and the SGD step equal one process's) and launches FSDP end to end
    (test_torchrun_launches_the_same_config, test_slurm_script_trains_under_a_stand_in_srun)."""
    data = _duplicated_half_batches(tmp_path)
    runs = {"single": [], "ddp": ["trainer=ddp", "trainer.devices=2"], "fsdp": ["trainer=fsdp", "trainer.devices=2"]}
    summaries, steps = {}, {}
    for name, overrides in runs.items():
        summaries[name] = _completed(train(*data, *overrides, run_dir=tmp_path / name), tmp_path / name, 3)
        steps[name] = _train_steps(tmp_path / name)
    assert sorted(steps["single"]) == [0, 1, 2]
    for name in ("ddp", "fsdp"):
        assert sorted(steps[name]) == [0, 1, 2], name
        for step, values in steps["single"].items():
            for metric in COMPARED:
                key = f"train/{metric}"
                torch.testing.assert_close(steps[name][step][key], values[key], **METRIC_TOLERANCE, msg=(name, key))
        for metric in COMPARED:
            key = f"val/{metric}"
            torch.testing.assert_close(
                summaries[name]["metrics"][key], summaries["single"]["metrics"][key], **METRIC_TOLERANCE
            )
        _assert_same_weights(tmp_path / name, tmp_path / "single", **WEIGHT_TOLERANCE)
    assert (tmp_path / "fsdp" / "checkpoints" / "last.ckpt").is_dir()  # a sharded checkpoint folder
    _assert_same_weights(tmp_path / "ddp", tmp_path / "fsdp", rtol=0, atol=0)
    assert steps["single"][2]["train/loss"] != steps["single"][0]["train/loss"]  # it trained


@pytest.mark.slow
def test_ddp_trains_whole_rankings_as_one_process_does(tmp_path):
    """loss=plackett_luce on streamed rankings: 2-process DDP, each rank holding half of every global batch, takes
    the one-process run's steps (metrics and final weights)."""
    data = [*_duplicated_half_batches(tmp_path, ranked=True), "loss=plackett_luce"]
    runs = {"single": [], "ddp": ["trainer=ddp", "trainer.devices=2"]}
    summaries = {
        name: _completed(train(*data, *o, run_dir=tmp_path / name), tmp_path / name, 3) for name, o in runs.items()
    }
    for key in ("val/loss", "val/ranking/kendall_tau", "val/ranking/top1", "val/rewards/accuracies"):
        torch.testing.assert_close(
            summaries["ddp"]["metrics"][key], summaries["single"]["metrics"][key], **METRIC_TOLERANCE
        )
    _assert_same_weights(tmp_path / "ddp", tmp_path / "single", **WEIGHT_TOLERANCE)
    assert summaries["single"]["metrics"]["train/rankings_per_s"] > 0


@pytest.mark.slow
def test_fsdp_with_gradient_accumulation_keeps_the_global_batch(tmp_path):
    data = _duplicated_half_batches(tmp_path)
    _completed(train(*data, run_dir=tmp_path / "single"), tmp_path / "single", 3)
    fsdp = ["trainer=fsdp", "trainer.devices=2", "trainer.accumulate_grad_batches=2"]  # 2 pairs per micro-batch
    _completed(train(*data, *fsdp, run_dir=tmp_path / "fsdp"), tmp_path / "fsdp", 3)
    _assert_same_weights(tmp_path / "fsdp", tmp_path / "single", **WEIGHT_TOLERANCE)


FSDP_SMALL = [
    "task.source.num_train_pairs=16",  # 2 steps per epoch
    "task.source.num_val_pairs=16",
    "data.batch_size=8",
    "data.eval_batch_size=16",
    "trainer.val_check_interval=100",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
    "trainer=fsdp",
    "trainer.accelerator=cpu",
    "trainer.devices=2",
]


@pytest.mark.slow  # slow: three 2-process FSDP runs (~60 s), runs with -m slow
def test_fsdp_resumes_from_the_sharded_last_checkpoint_to_the_same_weights(tmp_path):
    """2 steps (one epoch), then resume from checkpoints/last.ckpt/ for 2 more = a straight 4-step run.
    CI resumes one-process runs bitwise (tests/runtime/test_resume.py) and writes sharded checkpoints
    (test_slurm_script_trains_under_a_stand_in_srun)."""
    first, resumed, straight = tmp_path / "first", tmp_path / "resumed", tmp_path / "straight"
    _completed(train(*FSDP_SMALL, "trainer.max_epochs=1", run_dir=first), first, 2)
    last = first / "checkpoints" / "last.ckpt"
    assert last.is_dir() and len(list(last.glob("*.distcp"))) == 2  # one shard per rank
    ckpt = f"ckpt_path={last}"
    _completed(train(*FSDP_SMALL, "trainer.max_epochs=2", ckpt, run_dir=resumed), resumed, 4)
    _completed(train(*FSDP_SMALL, "trainer.max_epochs=2", run_dir=straight), straight, 4)
    _assert_same_weights(resumed, straight, rtol=0, atol=0)
    for step in (2, 3):  # the resumed run logs the straight run's steps 2 and 3
        assert _train_steps(resumed)[step]["train/loss"] == _train_steps(straight)[step]["train/loss"]


@pytest.mark.slow
def test_fsdp_trains_in_bf16_true_with_activation_checkpointing(tmp_path):
    overrides = [
        *FSDP_SMALL,
        "trainer.max_steps=2",
        "trainer.precision=bf16-true",
        "model.activation_checkpointing=true",
    ]
    summary = _completed(train(*overrides, run_dir=tmp_path), tmp_path, 2)
    assert 0 < summary["metrics"]["val/loss"] < 2
    assert json.loads((tmp_path / "policy" / "config.json").read_text())["dtype"] == "bfloat16"
    assert all(w.dtype == torch.bfloat16 for w in load_file(tmp_path / "policy" / "model.safetensors").values())


# --- launchers: torchrun and SLURM -------------------------------------------------------------------------

LAUNCH_SMALL = [
    "task.source.num_train_pairs=32",
    "task.source.num_val_pairs=16",
    "data.batch_size=8",
    "data.eval_batch_size=16",
    "trainer.max_steps=2",
    "trainer.enable_progress_bar=false",
    "trainer.accelerator=cpu",
    "trainer.devices=2",
]


def _launch(command: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        command, cwd=ROOT, env=offline_env(**(env or {})), capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("strategy", ["fsdp", pytest.param("ddp", marks=pytest.mark.slow)])
def test_torchrun_launches_the_same_config(strategy, tmp_path):
    """`torchrun --nproc_per_node 2 train.py trainer=… trainer.devices=2`: Lightning finds torchrun's
    environment (TorchElasticEnvironment) and starts no processes of its own."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    result = _launch([*torchrun, "train.py", f"trainer={strategy}", *LAUNCH_SMALL, f"hydra.run.dir={tmp_path}"])
    summary = _completed(result, tmp_path, 2)
    assert summary["config"]["trainer"]["devices"] == 2
    assert not (tmp_path / "train_ddp_process_1.log").exists()  # Lightning's own launcher did not run
    AutoModelForCausalLM.from_pretrained(tmp_path / "policy", local_files_only=True)


STAND_IN_SRUN = """#!/bin/bash
# srun on one node: SLURM_NTASKS copies of the command, each with the task variables srun sets.
pids=()
for ((task = 0; task < SLURM_NTASKS; task++)); do
  SLURM_PROCID=$task SLURM_LOCALID=$task SLURM_NODEID=0 "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
"""


def test_slurm_script_trains_under_a_stand_in_srun(tmp_path):
    """scripts/slurm_train.sbatch as SLURM would run it on one node with 2 tasks (Lightning's
    SLURMEnvironment reads the SLURM_* variables); its GPU defaults are overridden for the CPU."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(STAND_IN_SRUN)
    (bin_dir / "srun").chmod(0o755)
    slurm = {
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "dpo-test",
        "SLURM_JOB_NUM_NODES": "1",
        "SLURM_NNODES": "1",
        "SLURM_NTASKS": "2",
        "SLURM_NTASKS_PER_NODE": "2",
        "SLURM_NODELIST": "127.0.0.1",
        "SLURM_SUBMIT_DIR": str(ROOT),
        "MASTER_PORT": str(_free_port()),
        "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    run_dir = tmp_path / "run"
    overrides = [*LAUNCH_SMALL, "trainer.precision=32-true", f"hydra.run.dir={run_dir}"]
    summary = _completed(_launch(["bash", "scripts/slurm_train.sbatch", *overrides], slurm), run_dir, 2)
    assert summary["config"]["trainer"]["strategy"]["_target_"] == "dpo_lightning.models.sharding.FSDP2Strategy"
    assert (run_dir / "checkpoints" / "last.ckpt").is_dir()


def test_slurm_script_is_valid_bash():
    result = subprocess.run(["bash", "-n", str(ROOT / "scripts" / "slurm_train.sbatch")], capture_output=True)
    assert result.returncode == 0, result.stderr


# --- config checks --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["trainer=fsdp", "model.block_class=null"],
            "model.block_class: trainer=fsdp shards per transformer block: name the block class of the random-init "
            "'llama' model (e.g. LlamaDecoderLayer)",
        ),
        (
            ["trainer=fsdp", "trainer.precision=16-mixed"],
            "trainer.precision: trainer=fsdp supports 32-true, bf16-mixed, bf16-true, 16-true, got '16-mixed'",
        ),
        (["trainer=fsdp", "reference=lora"], "reference: reference=lora is not supported with trainer=fsdp"),
        (["trainer.precision=bf17"], "trainer.precision: must be one of 32-true, bf16-mixed, bf16-true, 16-mixed"),
        (
            ["model.activation_checkpointing=maybe"],
            "model.activation_checkpointing: must be true or false, got 'maybe'",
        ),
        (
            ["trainer=ddp", "trainer.devices=3"],
            "data.batch_size: 32 pairs (the global batch) is not divisible by trainer.num_nodes × trainer.devices × "
            "trainer.accumulate_grad_batches = 1 × 3 × 1",
        ),
    ],
)
def test_scale_config_mistakes_fail_in_one_line(overrides, message):
    cfg = compose(*overrides)
    with pytest.raises(ConfigError) as error:  # the model's own check, then the trainer's (as validate_config calls)
        check_model_config(cfg.model)
        check_trainer_config(cfg)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["trainer=fsdp"],
        ["trainer=fsdp", "trainer.precision=bf16-true", "model.activation_checkpointing=true"],
        ["trainer=ddp", "trainer.num_nodes=2", "trainer.devices=4", "trainer.accumulate_grad_batches=4"],
        ["trainer=gpu", "trainer.precision=bf16"],
        ["trainer=fsdp", "model=hf", "model.name_or_path=gpt2"],  # block class detected when the model loads
    ],
)
def test_scale_configs_that_work_pass(overrides):
    check_trainer_config(compose(*overrides))


@pytest.mark.parametrize("strategy", ["ddp", pytest.param("fsdp", marks=pytest.mark.slow)])
def test_online_dpo_under_data_parallelism_samples_each_ranks_share_of_the_prompts(strategy, tmp_path):
    """Two processes: each samples its own half of every step's prompts (different draws: seed + rank), the counts
    of both ranks add up in summary.json, and training still takes its steps (FSDP: generation with synced ranks)."""
    online = ["algorithm=online", "algorithm.samples_per_prompt=2", "algorithm.sampling.max_new_tokens=8",
              "samples.num_prompts=4", "samples.max_new_tokens=8", "task.source.num_train_pairs=64",
              "task.source.num_val_pairs=16", "data.batch_size=8", "trainer.max_steps=3",
              f"trainer={strategy}", "trainer.devices=2", "trainer.accelerator=cpu"]  # fmt: skip
    summary = _completed(train(*online, run_dir=tmp_path), tmp_path, 3)
    counts = summary["rollouts"]["counts"]
    assert counts["prompts"] == 3 * 8 and counts["samples"] == 3 * 8 * 2  # 3 steps × 8 prompts over 2 ranks
    assert summary["metrics"]["train/rollout/tokens_per_s"] > 0 and "val/kl" in summary["metrics"]


def test_ppo_under_ddp_samples_each_ranks_share_and_steps_together(tmp_path):
    """Two processes: each rolls out its half of every rollout's 8 prompts (4, one minibatch of 4 per epoch, two
    epochs: 2 optimizer steps a rollout), the counts of both ranks add up in summary.json, and the rollouts' reward,
    KL and value loss are logged (Lightning's DDP strategy syncs each `manual_backward` of the minibatches)."""
    ppo = ["algorithm=ppo", "algorithm.mini_batch_size=4", "algorithm.ppo_epochs=2",
           "algorithm.sampling.max_new_tokens=8", "samples.num_prompts=4", "samples.max_new_tokens=8",
           "task.source.num_train_pairs=64", "task.source.num_val_pairs=16", "data.batch_size=8",
           "trainer.max_steps=6", "trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu"]  # fmt: skip
    summary = _completed(train(*ppo, run_dir=tmp_path), tmp_path, 6)
    counts = summary["rollouts"]["counts"]
    assert counts["prompts"] == counts["samples"] == 3 * 8  # 3 rollouts × 8 prompts over 2 ranks
    metrics = summary["metrics"]
    assert all(
        isinstance(metrics[name], float) and metrics[name] == metrics[name]  # present, not NaN
        for name in ("train/reward", "train/kl", "train/kl_coef", "train/value_loss", "val/reward", "val/kl")
    )
    assert metrics["train/rollout/tokens_per_s"] > 0
