"""Checkpoint files: safetensors instead of pickles, written atomically.

A Lightning checkpoint is a nested dict — weights, optimizer and scheduler states, loop counters, callback and
data-position state, hyperparameters, RNG states. `SafetensorsCheckpointIO` stores it as one safetensors file:

    tensors   every tensor (and numpy array) of the dict, under the keys "0", "1", …
    metadata  {"format": FORMAT, "structure": JSON of the dict with each tensor replaced by {"__tensor__": "<key>"}}

Loading parses JSON and reads tensors, so no code from the file ever runs (a pickled checkpoint can run anything
on `torch.load`). JSON cannot say everything Python can, so the structure marks what it must:
{"__tuple__": […]}, {"__items__": [[key, value], …]} for a dict whose keys are not all plain strings (optimizer
states are keyed by int), {"__ndarray__": "<key>"} for numpy arrays (numpy's RNG state). Any other type is an
error naming where in the checkpoint it sits, rather than a silent conversion.

Atomic writes: the file is serialised in memory (as Lightning's own checkpoint writer does), written to
`<name>.tmp-<pid>` beside the target, flushed to disk (fsync), then
renamed over the target (`os.replace`, atomic on POSIX), and the folder is synced. A crash or a full disk during
a save leaves the previous checkpoint as it was; a failed save removes its temporary file and raises
`CheckpointError` naming the file and the reason.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric.plugins import CheckpointIO
from safetensors import safe_open
from safetensors.torch import save

from dpo_lightning.errors import RunError

FORMAT = "dpo-lightning-checkpoint/1"


class CheckpointError(RunError):
    """A checkpoint that could not be written or read; prints as one line naming the file."""


class _Tensors:
    """The tensors of one checkpoint under keys "0", "1", …; a tensor sharing storage with an earlier one is
    copied (safetensors stores no shared memory)."""

    def __init__(self) -> None:
        self.by_key: dict[str, torch.Tensor] = {}
        self._storages: set[int] = set()

    def add(self, value: torch.Tensor) -> str:
        tensor = value.detach().to("cpu").contiguous()
        storage = tensor.untyped_storage().data_ptr()
        if storage in self._storages:
            tensor = tensor.clone()
        self._storages.add(tensor.untyped_storage().data_ptr())
        key = str(len(self.by_key))
        self.by_key[key] = tensor
        return key


def _encode(value: Any, tensors: _Tensors, where: str) -> Any:
    """`value` as a JSON-able structure; its tensors added to `tensors`. `where` names the place for errors."""
    if isinstance(value, torch.Tensor):
        return {"__tensor__": tensors.add(value)}
    if isinstance(value, np.ndarray):
        return {"__ndarray__": tensors.add(torch.from_numpy(value.copy()))}
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: _encode(v, tensors, f"{where}.{k}") for k, v in value.items()}
        items = [[_encode(k, tensors, where), _encode(v, tensors, f"{where}.{k}")] for k, v in value.items()]
        return {"__items__": items}
    if isinstance(value, list | tuple):
        items = [_encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(value)]
        return {"__tuple__": items} if isinstance(value, tuple) else items
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise CheckpointError(f"cannot store {type(value).__name__} at {where} in a safetensors checkpoint")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        return tensors[value["__tensor__"]]
    if "__ndarray__" in value:
        return tensors[value["__ndarray__"]].numpy()
    if "__tuple__" in value:
        return tuple(_decode(v, tensors) for v in value["__tuple__"])
    if "__items__" in value:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in value["__items__"]}
    return {k: _decode(v, tensors) for k, v in value.items()}


def save_checkpoint_file(checkpoint: dict[str, Any], path: str | os.PathLike) -> None:
    """Write `checkpoint` to `path` as safetensors, atomically (see the module docstring)."""
    path = Path(path)
    tensors = _Tensors()
    structure = json.dumps(_encode(checkpoint, tensors, "checkpoint"))
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        content = save(tensors.by_key, metadata={"format": FORMAT, "structure": structure})
        with open(temporary, "wb") as file:  # the process's umask applies, as to any file it writes
            file.write(content)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    except Exception as error:  # an OSError, or safetensors' own error type for a failed write
        temporary.unlink(missing_ok=True)
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise CheckpointError(f"{path}: could not save the checkpoint ({reason}); the previous one is intact") from None


def load_checkpoint_file(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint_file` (tensors on `device`)."""
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as opened:
            metadata = opened.metadata() or {}
            tensors = {key: opened.get_tensor(key) for key in opened.keys()}  # noqa: SIM118 (not a dict)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint") from None
    except Exception as error:  # safetensors raises its own error types for a file in another format
        raise CheckpointError(
            f"{path}: not a dpo-lightning safetensors checkpoint ({error}); pickled checkpoints are not loaded"
        ) from None
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a dpo-lightning checkpoint (format {metadata.get('format')!r})")
    return _decode(json.loads(metadata["structure"]), tensors)


class SafetensorsCheckpointIO(CheckpointIO):
    """Lightning's checkpoint I/O plugin, with `save_checkpoint_file` / `load_checkpoint_file`."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        save_checkpoint_file(checkpoint, path)

    def load_checkpoint(self, path: Any, map_location: Any | None = None, weights_only: bool | None = None) -> dict:
        device = map_location if isinstance(map_location, str | torch.device) else "cpu"
        return load_checkpoint_file(path, device)

    def remove_checkpoint(self, path: Any) -> None:
        """Delete a checkpoint: a file, or (`trainer=fsdp`) a folder of shards."""
        path = Path(path)
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
