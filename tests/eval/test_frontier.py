"""The reward–KL frontier: points read from a fake sweep, frontier.csv, frontier.png, the command line, --run."""

from __future__ import annotations

import csv
import json
import random
import sys
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from matplotlib.container import ErrorbarContainer
from matplotlib.image import imread

from dpo_lightning.cli.frontier import main, sweep_command
from dpo_lightning.errors import DataError
from dpo_lightning.eval.frontier import (
    CSV_COLUMNS,
    REFERENCE_LABEL,
    X_LABEL,
    Y_LABEL,
    collect_points,
    frontier_title,
    plot_frontier,
    reference_reward,
    write_frontier,
)

TARGETS = {
    "dpo": "dpo_lightning.losses.dpo.DPO",
    "ipo": "dpo_lightning.losses.ipo.IPO",
    "cdpo": "dpo_lightning.losses.cdpo.CDPO",
}
VAL_COLUMNS = ["val/reward", "val/reward_se", "val/kl", "val/kl_se", "val/reference_reward"]


def _validations(seed: int, steps: list[int]) -> list[dict]:
    rng = random.Random(seed)
    return [
        {
            "step": step,
            "val/reward": rng.uniform(-1, 1),
            "val/reward_se": rng.uniform(0.01, 0.1),
            "val/kl": rng.uniform(0, 20),
            "val/kl_se": rng.uniform(0.1, 1),
            "val/reference_reward": rng.uniform(-0.5, 0),
        }
        for step in steps
    ]


def write_run(
    folder: Path,
    loss: str,
    beta: float,
    validations: list[dict],
    status: str = "completed",
    error: str | None = None,
    with_choices: bool = True,
    with_reward: bool = True,
) -> None:
    """A run folder as the trainer writes it: summary.json (final validation) and csv/metrics.csv."""
    (folder / "csv").mkdir(parents=True)
    final = validations[-1] if validations else {}
    metrics = {"val/loss": 0.4, "train/loss": 0.3}
    if with_reward:
        metrics |= {name: final[name] for name in VAL_COLUMNS if name in final}
    summary = {
        "status": status,
        "error": error,
        "metrics": metrics,
        "config": {"beta": beta, "loss": {"_target_": TARGETS[loss], "beta": beta}, "task": {"name": "sentiment"}},
        "global_step": final.get("step", 0),
    }
    if with_choices:
        summary["choices"] = {"loss": loss, "task": "sentiment", "model": "tiny", "reference": "model"}
    (folder / "summary.json").write_text(json.dumps(summary, indent=2))
    columns = ["epoch", "step", "train/loss", "val/loss", *(VAL_COLUMNS if with_reward else [])]
    with (folder / "csv" / "metrics.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns, restval="")
        writer.writeheader()
        for validation in validations:
            for step in range(validation["step"] - 2, validation["step"]):
                writer.writerow({"epoch": 0, "step": step, "train/loss": 0.5})
            row = {"epoch": 0, "step": validation["step"], "val/loss": 0.4}
            writer.writerow(row | ({k: v for k, v in validation.items() if k != "step"} if with_reward else {}))


@pytest.fixture
def sweep(tmp_path):
    """Five jobs: dpo β 0.1 and 0.5, ipo β 0.1, cdpo β 0.2 (no `choices`), a failed one, one without rewards."""
    root = tmp_path / "sweep"
    runs = {
        "0": ("dpo", 0.1, _validations(0, [4, 8, 12])),
        "1": ("dpo", 0.5, _validations(1, [4, 8, 12])),
        "2": ("ipo", 0.1, _validations(2, [6, 12])),
        "10": ("cdpo", 0.2, _validations(10, [12])),
    }
    for name, (loss, beta, validations) in runs.items():
        write_run(root / name, loss, beta, validations, with_choices=name != "10")
    # The final trainer.validate logs a second row at the last step: merged, the later value wins.
    last = runs["0"][2][-1] | {"val/reward": 0.75, "val/kl": 3.5}
    runs["0"][2][-1] = last
    with (root / "0" / "csv" / "metrics.csv").open("a", newline="") as file:
        row = [0, last["step"], "", 0.4, *(last[name] for name in VAL_COLUMNS)]
        csv.writer(file).writerow(row)
    summary = json.loads((root / "0" / "summary.json").read_text())
    summary["metrics"] |= {name: last[name] for name in VAL_COLUMNS}
    (root / "0" / "summary.json").write_text(json.dumps(summary))
    write_run(root / "3", "dpo", 1.0, _validations(3, [4]), status="failed", error="RuntimeError: boom")
    write_run(root / "4", "dpo", 0.3, _validations(4, [4, 8]), with_reward=False)
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return root, runs


def _expected(runs: dict, per_validation: bool) -> dict[tuple[str, int], dict]:
    """(run, step) → the numbers written, for every plotted point."""
    return {
        (name, v["step"]): {"series": loss, "beta": beta, **v}
        for name, (loss, beta, validations) in runs.items()
        for v in (validations if per_validation else validations[-1:])
    }


@pytest.mark.parametrize("per_validation", [False, True])
def test_points_are_the_numbers_each_run_wrote(sweep, per_validation):
    root, runs = sweep
    points = collect_points(root, per_validation)
    assert [p.run for p in points][:1] == ["0"] and [p.run for p in points][-1] == "10"  # natural order
    plotted = {(p.run, p.step): p for p in points if p.plotted}
    expected = _expected(runs, per_validation)
    assert set(plotted) == set(expected)
    for key, want in expected.items():
        point = plotted[key]
        assert (point.series, point.beta, point.status, point.note) == (want["series"], want["beta"], "completed", "")
        assert point.reward == want["val/reward"] and point.reward_se == want["val/reward_se"]
        assert point.kl == want["val/kl"] and point.kl_se == want["val/kl_se"]
        assert point.reference_reward == want["val/reference_reward"]
    assert plotted[("0", 12)].reward == 0.75  # the later of two rows at the same step
    skipped = {p.run: p for p in points if not p.plotted}
    assert set(skipped) == {"3", "4"}
    assert skipped["3"].status == "failed" and "RuntimeError: boom" in skipped["3"].note
    assert skipped["4"].status == "completed" and "val/reward" in skipped["4"].note
    assert skipped["4"].reward is None and skipped["4"].kl is None


def test_a_run_missing_only_the_csv_is_skipped_per_validation(sweep):
    root, _ = sweep
    (root / "2" / "csv" / "metrics.csv").unlink()
    per_run = {p.run: p for p in collect_points(root, per_validation=False)}
    per_validation = [p for p in collect_points(root, per_validation=True) if p.run == "2"]
    assert per_run["2"].plotted
    assert len(per_validation) == 1 and not per_validation[0].plotted and "metrics.csv" in per_validation[0].note


def test_reference_reward_weighs_each_run_equally(sweep):
    root, runs = sweep
    points = collect_points(root, per_validation=True)
    run_means = [sum(v["val/reference_reward"] for v in vs) / len(vs) for _, _, vs in runs.values()]
    assert reference_reward(points) == pytest.approx(sum(run_means) / len(run_means))


def test_frontier_csv_holds_every_point_and_the_skipped_runs(sweep, tmp_path):
    root, runs = sweep
    points = collect_points(root, per_validation=True)
    csv_path, png_path = write_frontier(points, tmp_path / "out", "title")
    assert csv_path == tmp_path / "out" / "frontier.csv" and png_path == tmp_path / "out" / "frontier.png"
    with csv_path.open(newline="") as file:
        reader = csv.DictReader(file)
        rows = list(reader)
    assert tuple(reader.fieldnames) == CSV_COLUMNS
    assert CSV_COLUMNS == ("run", "series", "beta", "step", "reward", "reward_se", "kl", "kl_se", "status", "note")
    expected = _expected(runs, per_validation=True)
    numbered = {(row["run"], int(row["step"])): row for row in rows if row["reward"]}
    assert set(numbered) == set(expected)
    for key, want in expected.items():
        row = numbered[key]
        assert (row["series"], float(row["beta"]), row["status"], row["note"]) == (
            want["series"],
            want["beta"],
            "completed",
            "",
        )
        for column in ("reward", "reward_se", "kl", "kl_se"):
            assert float(row[column]) == want[f"val/{column}"]
    blank = {row["run"]: row for row in rows if not row["reward"]}
    assert set(blank) == {"3", "4"} and blank["3"]["status"] == "failed" and blank["4"]["kl"] == ""


def test_the_plot_shows_each_series_the_reference_and_the_betas(sweep, tmp_path):
    root, runs = sweep
    points = collect_points(root, per_validation=False)
    axes = plot_frontier(points, frontier_title(points)).axes[0]
    assert (axes.get_xlabel(), axes.get_ylabel()) == (X_LABEL, Y_LABEL)
    assert "sentiment" in axes.get_title()
    containers = {c.get_label(): c for c in axes.containers if isinstance(c, ErrorbarContainer)}
    assert set(containers) == {"dpo", "ipo", "cdpo"}
    for series in containers:
        data_line = containers[series].lines[0]
        shown = sorted(zip(data_line.get_xdata(), data_line.get_ydata(), strict=True))
        wanted = sorted((v[-1]["val/kl"], v[-1]["val/reward"]) for loss, _, v in runs.values() if loss == series)
        assert shown == wanted
    reference = [line for line in axes.get_lines() if line.get_label() == REFERENCE_LABEL]
    completed_references = [v[-1]["val/reference_reward"] for _, _, v in runs.values()]
    assert len(reference) == 1
    assert reference[0].get_ydata()[0] == pytest.approx(sum(completed_references) / len(completed_references))
    labels = sorted((text.get_text(), text.xy) for text in axes.texts)
    wanted_labels = sorted((f"β={beta:g}", (v[-1]["val/kl"], v[-1]["val/reward"])) for _, beta, v in runs.values())
    assert labels == wanted_labels
    assert [t.get_text() for t in axes.get_legend().get_texts()].count(REFERENCE_LABEL) == 1

    _, png_path = write_frontier(points, tmp_path, "title")
    image = imread(png_path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100 and image.std() > 0


def test_command_line_prints_the_table_sorted_and_lists_skipped_runs(sweep, tmp_path, capsys):
    root, runs = sweep
    assert main([str(root), "--per-validation", "--out", str(tmp_path / "out")]) == 0
    lines = capsys.readouterr().out.splitlines()
    skipped_at = next(i for i, line in enumerate(lines) if line.startswith("skipped"))
    table = [line.split() for line in lines[1:skipped_at]]
    expected = sorted((v["series"], v["val/kl"]) for v in _expected(runs, per_validation=True).values())
    assert [(row[0], row[3]) for row in table] == [(series, f"{kl:.4f}") for series, kl in expected]
    assert any(line.strip().startswith("3:") and "boom" in line for line in lines[skipped_at:])
    assert (tmp_path / "out" / "frontier.csv").exists() and (tmp_path / "out" / "frontier.png").exists()
    assert not (root / "frontier.csv").exists()


def test_empty_sweep_folder_is_a_one_line_error_with_status_2(tmp_path, capsys):
    """The command's entry point, called in-process."""
    empty = tmp_path / "empty sweep"
    empty.mkdir()
    (empty / "0").mkdir()
    assert main([str(empty)]) == 2
    stderr = capsys.readouterr().err
    assert stderr.strip().splitlines() == [stderr.strip()]
    assert stderr.startswith("error: ") and str(empty) in stderr
    with pytest.raises(DataError, match="no runs"):
        collect_points(empty, per_validation=False)


def test_a_sweep_with_nothing_to_plot_is_an_error(tmp_path, capsys):
    write_run(tmp_path / "0", "dpo", 0.1, _validations(0, [4]), with_reward=False)
    assert main([str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert "val/reward" in captured.out and str(tmp_path) in captured.err
    assert not (tmp_path / "frontier.png").exists()


FAKE_SWEEP = """
import json, sys
from pathlib import Path
sweep, overrides = Path(sys.argv[1]), dict(arg.split("=", 1) for arg in sys.argv[2:])
job = sweep / "0"
(job / "csv").mkdir(parents=True)
metrics = {"val/reward": 0.25, "val/reward_se": 0.02, "val/kl": 4.0, "val/kl_se": 0.5, "val/reference_reward": -0.1}
beta = float(overrides["beta"])
config = {"beta": beta, "loss": {"_target_": "dpo_lightning.losses.dpo.DPO", "beta": beta}}
summary = {"status": "completed", "error": None, "metrics": metrics, "config": config,
           "choices": {"loss": overrides["loss"], "task": "sentiment"}, "global_step": 16}
(job / "summary.json").write_text(json.dumps(summary))
failed = sweep / "1"
failed.mkdir()
(failed / "summary.json").write_text(json.dumps({"status": "failed", "error": "ValueError: bad", "metrics": {}}))
print("fake job done", flush=True)
sys.exit(1)
"""


def test_run_option_runs_the_sweep_streams_it_and_plots_what_finished(tmp_path, capsys):
    calls = []

    def stand_in(sweep_dir: Path, overrides: list[str]) -> list[str]:
        calls.append((sweep_dir, list(overrides)))
        return [sys.executable, "-c", FAKE_SWEEP, str(sweep_dir), *overrides]

    sweep = tmp_path / "sweep"
    assert main(["--run", str(sweep), "--", "beta=0.3", "loss=ipo"], command_for=stand_in) == 0
    captured = capsys.readouterr()
    assert calls == [(sweep.resolve(), ["beta=0.3", "loss=ipo"])]
    assert "fake job done" in captured.out and "status 1" in captured.err
    with (sweep / "frontier.csv").open(newline="") as file:
        rows = {row["run"]: row for row in csv.DictReader(file)}
    assert rows["0"]["series"] == "ipo" and float(rows["0"]["beta"]) == 0.3 and float(rows["0"]["kl"]) == 4.0
    assert rows["1"]["status"] == "failed" and "ValueError: bad" in rows["1"]["note"]


@pytest.mark.parametrize("name", ["plain", "with space, comma=and 'quote'"])
def test_sweep_command_is_dpo_train_multirun_with_a_parseable_sweep_dir(tmp_path, name):
    sweep = tmp_path / name
    command = sweep_command(sweep, ["beta=0.1,0.5", "loss=dpo,ipo"])
    assert command[:4] == [sys.executable, "-m", "dpo_lightning.cli.train", "-m"]
    assert command[4:6] == ["beta=0.1,0.5", "loss=dpo,ipo"]
    override = OverridesParser.create().parse_override(command[6])
    assert override.key_or_group == "hydra.sweep.dir" and override.value() == str(sweep)


def test_per_validation_steps_are_the_sampled_global_steps(tmp_path):
    """Lightning logs a validation inside fit at global step − 1 and the final validation after fit again at
    the last step; `val/step` (logged by the sampler) names the weights, so the repeat merges into one point."""
    run = tmp_path / "0"
    (run / "csv").mkdir(parents=True)
    summary = {"status": "completed", "error": None, "metrics": {}, "config": {"beta": 0.1},
               "choices": {"loss": "dpo"}, "global_step": 8}  # fmt: skip
    (run / "summary.json").write_text(json.dumps(summary))
    rows = [  # (Lightning's step, val/step, reward, kl)
        (3, 4, 0.2, 1.0),
        (7, 8, 0.5, 2.0),
        (8, 8, 0.5, 2.0),
    ]
    with (run / "csv" / "metrics.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["epoch", "step", "val/step", "val/reward", "val/kl"])
        writer.writerows([0, step, float(val_step), reward, kl] for step, val_step, reward, kl in rows)
    points = collect_points(tmp_path, per_validation=True)
    assert [(p.step, p.reward, p.kl) for p in points] == [(4, 0.2, 1.0), (8, 0.5, 2.0)]


def test_a_loss_without_beta_has_no_beta(tmp_path):
    """Preferred-FT and Unlikelihood have no β: their points carry none, though the config's top level has one."""
    run = tmp_path / "0"
    (run / "csv").mkdir(parents=True)
    metrics = {"val/reward": 0.5, "val/kl": 0.2}
    config = {"beta": 0.1, "loss": {"_target_": "dpo_lightning.losses.sft.SFT", "length_normalized": False}}
    summary = {"status": "completed", "error": None, "metrics": metrics, "config": config,
               "choices": {"loss": "preferred_ft"}, "global_step": 4}  # fmt: skip
    (run / "summary.json").write_text(json.dumps(summary))
    (point,) = collect_points(tmp_path, per_validation=False)
    assert (point.series, point.beta, point.reward) == ("preferred_ft", None, 0.5)
    figure = plot_frontier([point], "t")
    assert not [text for text in figure.axes[0].texts if "β" in text.get_text()]
