"""The rankings experiment (scripts/rankings_experiment.py), reduced: every method trains for the same budget on
the same rankings and reports reward, KL, ranking metrics and throughput."""

import json
import math
import subprocess
import sys

import pytest
from helpers import ROOT


@pytest.mark.slow  # ≈ 1 minute: three training processes
def test_quick_experiment_trains_every_method_for_the_same_budget(tmp_path):
    command = [sys.executable, "scripts/rankings_experiment.py", "--quick", "--out", str(tmp_path), "--betas", "0.1"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    rows = {row["method"]: row for row in json.loads((tmp_path / "results.json").read_text())}
    assert set(rows) == {"plackett_luce", "dpo_all_pairs", "dpo_flattened"}
    for method, row in rows.items():
        assert row["steps"] >= 1 and row["rankings/s"] > 0 and row["pairs/s"] > 0, method
        assert math.isfinite(row["reward"]) and math.isfinite(row["kl"]), method
    for method in ("plackett_luce", "dpo_all_pairs"):  # whole rankings: ranking metrics in [−1, 1] and [0, 1]
        assert -1 <= rows[method]["kendall_tau"] <= 1 and 0 <= rows[method]["top1"] <= 1, method

    summaries = {
        method: json.loads(next((tmp_path / "sweep" / method).glob("0/summary.json")).read_text()) for method in rows
    }
    budgets = {summary["config"]["trainer"]["max_time"] for summary in summaries.values()}
    assert budgets == {"00:00:00:03"}
    assert summaries["plackett_luce"]["config"]["loss"]["_target_"].endswith("PlackettLuce")
    assert summaries["dpo_flattened"]["config"]["data"]["rankings"] == "pairs"
    assert (
        summaries["dpo_flattened"]["config"]["data"]["batch_size"]
        == 6 * summaries["dpo_all_pairs"]["config"]["data"]["batch_size"]
    )
    assert (tmp_path / "frontier.png").stat().st_size > 0
