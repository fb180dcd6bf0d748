"""The offline reproduction of the paper's sentiment experiment (scripts/sentiment_frontier.py), reduced."""

import csv
import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from helpers import ROOT, offline_env

# The quick reproduction's frontier as the code gave it when the committed figures (README, docs/) were last
# re-measured. A change that moves these numbers moves the full reproduction's too: re-run it
# (`python scripts/sentiment_frontier.py`), update docs/sentiment-frontier.* and the README, then this file
# (`python scripts/sentiment_frontier.py --quick --betas 0.1 1 --out /tmp/quick && cp /tmp/quick/frontier.csv
# scripts/sentiment-frontier-quick.csv`).
QUICK_FRONTIER = ROOT / "scripts" / "sentiment-frontier-quick.csv"


@pytest.mark.slow  # slow: the pipeline's six trainings and the pair generation (~65 s), runs with -m slow
def test_quick_reproduction_runs_every_stage_and_plots_every_method(tmp_path):
    """CI runs each stage on its own: an SFT run (loss=sft in tests/losses/test_every_loss.py), the pairs command
    (tests/eval/test_pairs.py), a second stage from a saved policy (model.init_from in tests/models/test_models.py),
    sweeps (tests/cli/test_sweep.py) and the frontier (tests/eval/test_frontier.py). Run it (-m slow) after a change
    that may move the committed figures."""
    command = [
        sys.executable,
        "scripts/sentiment_frontier.py",
        "--quick",
        "--out",
        str(tmp_path),
        "--betas",
        "0.1",
        "1",
    ]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    sft = json.loads((tmp_path / "sft" / "summary.json").read_text())
    assert sft["status"] == "completed" and sft["choices"]["loss"] == "sft"
    pairs = pq.read_table(tmp_path / "pairs" / "train.parquet").to_pylist()
    assert pairs and all(row["chosen_reward"] > row["rejected_reward"] for row in pairs)
    provenance = json.loads((tmp_path / "pairs" / "provenance.json").read_text())
    assert provenance["policy"] == str((tmp_path / "sft" / "policy").resolve())

    jobs = sorted((tmp_path / "sweep").glob("*/[0-9]*/summary.json"))
    summaries = [json.loads(path.read_text()) for path in jobs]
    assert sorted((s["choices"]["loss"], s["config"]["beta"]) for s in summaries) == [
        ("dpo", 0.1), ("dpo", 1.0), ("preferred_ft", 0.1), ("unlikelihood", 0.1)
    ]  # fmt: skip
    for summary in summaries:  # every second-stage run starts from the SFT model, on the generated pairs
        assert summary["status"] == "completed"
        assert summary["config"]["model"]["init_from"] == str(tmp_path / "sft")
        assert summary["config"]["task"]["source"]["path"] == str(tmp_path / "pairs" / "train.parquet")

    with (tmp_path / "frontier.csv").open() as file:
        points = [row for row in csv.DictReader(file) if row["reward"]]
    with QUICK_FRONTIER.open() as file:
        committed = list(csv.DictReader(file))
    numbers = ("reward", "reward_se", "kl", "kl_se")
    assert [[p[k] for k in ("run", "series", "beta", "step")] for p in points] == [
        [p[k] for k in ("run", "series", "beta", "step")] for p in committed
    ]
    moved = [
        (point["run"], point["step"], key, point[key], old[key])
        for point, old in zip(points, committed, strict=True)
        for key in numbers
        if float(point[key]) != pytest.approx(float(old[key]), rel=1e-4, abs=1e-6)
    ]
    assert not moved, f"the reproduction's figures moved; re-measure them (see QUICK_FRONTIER): {moved[:4]}"
    by_run = {}
    for point in points:
        by_run.setdefault(point["run"], []).append(point)
    assert len(by_run) == 4 and all(len(run) >= 2 for run in by_run.values())  # one point per validation
    for run in by_run.values():
        steps = [int(point["step"]) for point in run]
        assert steps == sorted(set(steps))  # the final validation's repeat is merged
    assert (tmp_path / "frontier.png").stat().st_size > 0


@pytest.mark.slow  # ~2 minutes: SFT, pairs, a reward model, 8 short runs, Best-of-N twice
def test_the_on_policy_experiment_runs_end_to_end_quick(tmp_path):
    """scripts/on_policy_experiment.py --quick: every method of docs/on-policy.md's experiment trains and is scored."""
    command = [sys.executable, str(ROOT / "scripts" / "on_policy_experiment.py"), "--quick", "--seconds", "6",
               "--out", str(tmp_path)]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, env=offline_env(), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = list(csv.DictReader((tmp_path / "experiment.csv").open()))
    methods = {row["method"] for row in rows}
    assert {"SFT", "offline DPO (SFT pairs)", "online DPO (VADER)", "online DPO (reward model)",
            "iterative DPO (3 rounds)", "Best-of-N (VADER)", "Best-of-N (reward model)"} == methods  # fmt: skip
    record = json.loads((tmp_path / "experiment.json").read_text())
    assert 0 <= record["reward_model"]["held_out_accuracy"] <= 1
    assert (tmp_path / "experiment.png").stat().st_size > 0


@pytest.mark.slow  # ~5 minutes: SFT, pairs, a reward model, 19 short runs, Best-of-N twice, win rates
def test_the_figure2_reproduction_runs_end_to_end_quick(tmp_path):
    """scripts/figure2.py --quick: every series of docs/evaluation.md's Figure 2 trains and is scored."""
    command = [sys.executable, str(ROOT / "scripts" / "figure2.py"), "--quick", "--out", str(tmp_path)]
    result = subprocess.run(command, cwd=ROOT, env=offline_env(), capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    series = {row["series"] for row in csv.DictReader((tmp_path / "figure2.csv").open())}
    assert {"SFT", "DPO", "PPO-GT", "PPO", "Preferred-FT", "Unlikelihood", "Best-of-N (reward model)",
            "Best-of-N (VADER)"} == series  # fmt: skip
    record = json.loads((tmp_path / "figure2.json").read_text())
    assert set(record["win_rates_vs_sft"]) == {"DPO", "PPO-GT", "PPO", "Preferred-FT", "Unlikelihood"}
    assert all(0 <= rate["win_rate"] <= 1 for rate in record["win_rates_vs_sft"].values())
