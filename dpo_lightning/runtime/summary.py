"""`summary.json` in the run folder: status, error, metrics, throughput, wall time, data report, config."""

from __future__ import annotations

import json
import math
import traceback
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities.exceptions import SIGTERMException


def _json_value(value: Any) -> Any:
    """Plain JSON numbers: tensors become floats, NaN/inf become strings (JSON has no NaN)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class RunSummary:
    """`summary.json` in the run folder: status, error, metrics, throughput, wall time, data report, config.

    Written at the end of every run, including failed and interrupted ones.
    """

    def __init__(self, folder: Path, config: dict[str, Any]) -> None:
        self.path = folder / "summary.json"
        self.content: dict[str, Any] = {"status": "running", "error": None, "metrics": {}, "config": config}

    def update(self, **fields: Any) -> None:
        self.content.update(fields)

    def add_metrics(self, metrics: dict[str, Any]) -> None:
        self.content["metrics"].update({name: _json_value(value) for name, value in metrics.items()})

    def fail(self, error: BaseException) -> None:
        """Record why the run ended early: "preempted" (SIGTERM; `checkpoints/last.ckpt` was saved: continue with
        resume=auto), "interrupted" (Ctrl-C) or "failed"."""
        if isinstance(error, SIGTERMException):
            self.update(status="preempted", error="SIGTERM: checkpoints/last.ckpt saved; rerun with resume=auto")
            return
        status = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
        self.update(
            status=status,
            error=f"{type(error).__name__}: {error}",
            traceback=traceback.format_exception(error)[-3:],
        )

    def write(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(self.content, indent=2, sort_keys=False, default=str) + "\n")
        temporary.replace(self.path)
        return self.path
