"""How models are distributed and checkpointed: FSDP2 sharding (`trainer=fsdp`), sharded checkpoints, full export.

`trainer=fsdp` is Lightning's ModelParallelStrategy with every process in one data-parallel dimension
(`FSDP2Strategy`). `DPOLitModule.configure_model` calls `shard_causal_lm` on the policy and, separately, on the
frozen reference model, so trainable and frozen parameters never share a unit. The units follow how
`logprobs.token_logprobs` runs a model — the decoder's forward, then the LM head alone on chunks of response
positions, never the causal LM's own forward:

    unit (fully_shard)                      parameters                      all-gathered
    each transformer block                  the block's (`model.block_class`) for its forward, for its backward
    the input embeddings                    token embeddings                 likewise
    the LM head                             the head's                       for each chunk, for its backward
    the decoder                             the rest (final norm, …)         likewise
    tied embeddings: [embeddings, LM head]  the shared matrix (one group, as FSDP2 requires for shared weights)

Every unit is resharded after its forward (also the decoder and the head, which FSDP2 would otherwise keep
gathered as roots: the head is called outside the decoder, so it is a root of its own). One exception: a
tied group run without gradients (the reference, validation) stays gathered until the next forward, since
the head runs alone after the decoder's forward has ended.

Checkpoints are folders of per-rank shards (`torch.distributed.checkpoint`), `checkpoints/last.ckpt/` too;
like every checkpoint here they hold what the module saves (not a frozen reference). The exported policy is
gathered into one full state dict (`full_state_dict`) and written by rank 0 as a normal Hugging Face model.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.strategies.model_parallel import _is_sharded_checkpoint, _load_checkpoint
from lightning.pytorch import LightningModule
from lightning.pytorch.strategies import ModelParallelStrategy
from omegaconf import DictConfig
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, fully_shard

from dpo_lightning.models.loading import transformer_blocks

# Some units return views (GPT-2's and GPT-J's decoders reshape their hidden states); FSDP2 warns that an
# in-place op on such a view would skip its backward hook. `token_logprobs` only indexes them out of place
# (sharded gradients match one process for Llama in tests/runtime/test_parallel.py, and were checked for GPT-2,
# GPT-J and GPT-NeoX too).
warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor", category=UserWarning)


class FSDP2Strategy(ModelParallelStrategy):
    """`trainer=fsdp`: ModelParallelStrategy as plain FSDP2 — all `num_nodes × devices` processes form the
    data-parallel dimension (no tensor parallelism), and a sharded checkpoint loads, strictly, into what the
    module saves (`saved_children`: not a frozen reference, which it keeps out of checkpoints and rebuilds).

    Args: those of ModelParallelStrategy except the two mesh sizes, e.g. `save_distributed_checkpoint`.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1, **kwargs)

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    def load_checkpoint(self, checkpoint_path: str | Path, weights_only: bool | None = None) -> dict[str, Any]:
        path = Path(self.broadcast(checkpoint_path))
        if not _is_sharded_checkpoint(path):
            return super().load_checkpoint(path, weights_only)  # a single file: the run's SafetensorsCheckpointIO
        module = self.lightning_module
        state = {
            "state_dict": saved_children(module),
            **{f"optimizer_{i}": optimizer for i, optimizer in enumerate(self.optimizers)},
        }
        return _load_checkpoint(
            path, state, strict=module.strict_loading, optimizer_states_from_list=True, weights_only=True
        )  # never unpickle code: Lightning's metadata in the folder loads with torch.load(weights_only=True)


def saved_children(module: LightningModule) -> nn.ModuleDict:
    """The children of `module` whose weights its checkpoints hold, under their own names: those with a
    state-dict key left after the module's `on_save_checkpoint` (which drops e.g. a frozen reference)."""
    probe = {"state_dict": dict.fromkeys(module.state_dict())}
    module.on_save_checkpoint(probe)
    kept = {key.split(".", 1)[0] for key in probe["state_dict"]}
    return nn.ModuleDict({name: child for name, child in module.named_children() if name in kept})


def shard_causal_lm(model: nn.Module, mesh: DeviceMesh, block_class: str | None) -> None:
    """Apply FSDP2 (`fully_shard`) to a Hugging Face causal LM in place, in the units of the module docstring.

    Args:
        model: the causal LM (decoder reachable with `get_decoder()`, embeddings with `get_input_embeddings()`,
            head with `get_output_embeddings()`).
        mesh: the 1-D data-parallel device mesh to shard over.
        block_class: `model.block_class` (None: detected, see `models.transformer_blocks`).
    """
    for block in transformer_blocks(model, block_class):
        fully_shard(block, mesh=mesh)
    embeddings, head = model.get_input_embeddings(), model.get_output_embeddings()
    if head.weight is embeddings.weight:
        fully_shard([embeddings, head], mesh=mesh)
    else:
        fully_shard(embeddings, mesh=mesh)
        fully_shard(head, mesh=mesh, reshard_after_forward=True)
    fully_shard(model.get_decoder(), mesh=mesh, reshard_after_forward=True)


def is_sharded(model: nn.Module) -> bool:
    return any(isinstance(module, FSDPModule) for module in model.modules())


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """The full, unsharded state dict of an FSDP-sharded model, on CPU, on rank 0 (other ranks: empty); None if
    `model` is not sharded. A collective: every rank must call it."""
    if not is_sharded(model):
        return None
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def is_fsdp(trainer: DictConfig) -> bool:
    """Whether a `trainer/` config uses `FSDP2Strategy`."""
    strategy = trainer.get("strategy")
    return isinstance(strategy, DictConfig) and strategy.get("_target_") == f"{__name__}.{FSDP2Strategy.__name__}"
