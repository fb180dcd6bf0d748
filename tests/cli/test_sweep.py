"""Sweeps (`python train.py -m …`): sweep_summary.csv, failed jobs as rows, Optuna, the local and SLURM launchers,
W&B groups and names, and the frontier plot on W&B."""

import csv
import json
import logging
import os
import subprocess
from datetime import datetime
from pathlib import Path

import pytest
import wandb
from helpers import compose, read_summary, train, wandb_run_record
from hydra.utils import get_class
from omegaconf import OmegaConf

from dpo_lightning.cli import frontier
from dpo_lightning.cli.sweep import collect_jobs, format_table, objective

# The tiny model on a few pairs, two optimizer steps, validation sampling on 4 prompts (val/reward, val/kl).
TINY = [
    "task.source.num_train_pairs=32",
    "task.source.num_val_pairs=8",
    "data.batch_size=8",
    "data.eval_batch_size=8",
    "trainer.max_steps=2",
    "trainer.enable_progress_bar=false",
    "samples.num_prompts=4",
    "samples.max_new_tokens=4",
]
BAD_BETA_ERROR = "ConfigError: beta: must be > 0, got -1"


def _environment(home: Path) -> dict[str, str]:
    """Offline everything; no W&B credentials (so logger=wandb resolves to offline)."""
    return {
        **os.environ,
        "HOME": str(home),
        "NETRC": str(home / ".netrc"),
        "HF_HUB_OFFLINE": "1",
        "WANDB_API_KEY": "",
    }


def sweep(*arguments: str, home: Path, path: str | None = None) -> subprocess.CompletedProcess:
    """`python train.py <arguments>` with `home` as HOME (no W&B credentials) and `path` as PATH."""
    return train(*arguments, env=_environment(home) | ({"PATH": path} if path else {}))


def _csv_rows(sweep_dir: Path) -> list[dict[str, str]]:
    with (sweep_dir / "sweep_summary.csv").open(newline="") as file:
        return list(csv.DictReader(file))


# --- a 2-job sweep on the tiny model, one job failing on purpose ------------------------------------------------


@pytest.fixture(scope="module")
def failing_sweep(tmp_path_factory):
    """`-m beta=-1,0.1 logger=wandb`: job 0 fails its config check, job 1 trains (W&B offline)."""
    home = tmp_path_factory.mktemp("home")
    sweep_dir = tmp_path_factory.mktemp("sweep")
    result = sweep("-m", "beta=-1,0.1", *TINY, "logger=wandb", f"hydra.sweep.dir={sweep_dir}", home=home)
    return sweep_dir, result, home


def test_a_failed_job_is_a_row_with_its_error_and_the_other_job_still_runs(failing_sweep):
    sweep_dir, result, _ = failing_sweep
    assert result.returncode == 1, result.stderr[-3000:]  # a job failed: the multirun's status is 1
    failed, completed = _csv_rows(sweep_dir)
    assert (failed["job"], failed["status"], failed["error"]) == ("0", "failed", BAD_BETA_ERROR)
    assert failed["overrides"].split()[0] == "beta=-1" and failed["val/loss"] == ""
    assert (completed["job"], completed["status"], completed["error"], completed["run_folder"]) == (
        "1",
        "completed",
        "",
        "1",
    )
    assert completed["overrides"].split() == OmegaConf.load(sweep_dir / "1" / ".hydra" / "overrides.yaml")
    metrics = read_summary(sweep_dir / "1")["metrics"]
    for name in ("val/loss", "val/rewards/accuracies", "val/reward", "val/kl", "train/pairs_per_s"):
        assert float(completed[name]) == pytest.approx(metrics[name], rel=1e-12), name
    assert set(completed) - {"job", "status", "error", "overrides", "run_folder"} == set(metrics)  # every metric
    assert read_summary(sweep_dir / "0")["status"] == "failed"
    # the printed table: both jobs, then the failed one's error
    table = result.stdout[result.stdout.index(f"sweep {sweep_dir}: 2 jobs (1 completed, 1 failed)") :]
    assert [line.split()[:2] for line in table.splitlines()[2:4]] == [["0", "failed"], ["1", "completed"]]
    assert f"job 0: {BAD_BETA_ERROR}" in table


def test_sweep_runs_share_a_wandb_group_and_are_named_by_their_overrides(failing_sweep):
    sweep_dir, _, _ = failing_sweep
    run = wandb_run_record(sweep_dir / "1" / "wandb")
    hydra_job = OmegaConf.load(sweep_dir / "1" / ".hydra" / "hydra.yaml").hydra.job
    assert run.run_group == str(sweep_dir)
    assert run.display_name == hydra_job.override_dirname
    assert run.display_name.startswith("beta=0.1,data.batch_size=8,")
    assert read_summary(sweep_dir / "1")["config"]["logger"]["group"] == str(sweep_dir)  # recorded as used


def test_frontier_logs_its_plot_to_a_wandb_run_in_the_sweeps_group(failing_sweep, tmp_path, monkeypatch):
    sweep_dir, _, home = failing_sweep
    for name, value in _environment(home).items():
        monkeypatch.setenv(name, value)
    assert frontier.main([str(sweep_dir), "--out", str(tmp_path)]) == 0
    wandb.teardown()  # the W&B service writes the run's file; as at the command's exit, wait for it to finish
    run = wandb_run_record(tmp_path / "wandb")
    assert (run.run_group, run.display_name, run.job_type, run.project) == (
        str(sweep_dir),
        "frontier",
        "frontier",
        "dpo-lightning",
    )
    (image,) = (tmp_path / "wandb").glob("offline-run-*/files/media/images/frontier_*.png")
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert frontier.main([str(sweep_dir), "--out", str(tmp_path / "quiet"), "--no-wandb"]) == 0
    assert not (tmp_path / "quiet" / "wandb").exists()


# --- Optuna and the local parallel launcher ---------------------------------------------------------------------


def test_optuna_search_on_the_local_launcher_tells_a_failed_trial_and_keeps_the_best(tmp_path):
    """Two trials at once in two worker processes (hydra/launcher=local); TPE's seeded draws from
    choice(-1, 0.1) give one failing and one training trial."""
    result = sweep(
        "-m",
        "hydra/sweeper=optuna_search",
        "hydra/launcher=local",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=2",
        "beta=choice(-1,0.1)",
        *TINY[:-2],
        "samples.num_prompts=0",
        f"hydra.sweep.dir={tmp_path}",
        home=tmp_path,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2,backend=loky,prefer=processes" in result.stdout + result.stderr
    rows = {row["overrides"].split()[0]: row for row in _csv_rows(tmp_path)}
    assert (rows["beta=-1"]["status"], rows["beta=-1"]["error"]) == ("failed", BAD_BETA_ERROR)
    completed = rows["beta=0.1"]
    assert completed["status"] == "completed"
    val_loss = read_summary(tmp_path / completed["run_folder"])["metrics"]["val/loss"]
    results = OmegaConf.load(tmp_path / "optimization_results.yaml")  # what Optuna was told: the objective
    assert (results.best_params.beta, results.best_value) == (0.1, pytest.approx(val_loss, rel=1e-12))
    assert "hydra_joblib_launcher" in OmegaConf.load(tmp_path / "0" / ".hydra" / "hydra.yaml").hydra.launcher._target_


@pytest.mark.slow  # two more trainings (~35 s on 2 cores); the Optuna test above runs the local launcher in CI
def test_local_launcher_jobs_overlap_in_time(tmp_path):
    """Both jobs train at once: each job's log spans the other's start."""
    result = sweep(
        "-m", "hydra/launcher=local", "beta=0.1,0.5", *TINY[:-2], "samples.num_prompts=0",
        f"hydra.sweep.dir={tmp_path}", home=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]

    def span(job: str) -> tuple[datetime, datetime]:
        stamps = [line[1:24] for line in (tmp_path / job / "train.log").read_text().splitlines() if line[:1] == "["]
        return datetime.fromisoformat(stamps[0].replace(",", ".")), datetime.fromisoformat(stamps[-1].replace(",", "."))

    (start0, end0), (start1, end1) = span("0"), span("1")
    assert start0 < end1 and start1 < end0
    assert [row["status"] for row in _csv_rows(tmp_path)] == ["completed", "completed"]


def test_slurm_launcher_submits_one_array_job_with_the_configured_resources(tmp_path):
    """A stand-in `sbatch` keeps the script submitit wrote and refuses it; the sweep ends with status 1 and
    its (empty) sweep_summary.csv all the same. `hydra/sweeper=basic`, Hydra's own option, passes the command
    line's group check although conf/hydra/sweeper/ holds only ours."""
    stand_ins = tmp_path / "bin"
    stand_ins.mkdir()
    (stand_ins / "sbatch").write_text(
        f'#!/bin/sh\ncp "$1" {tmp_path}/job.sbatch\necho "sbatch: stand-in" >&2\nexit 1\n'
    )
    (stand_ins / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit checks that srun exists
    for script in stand_ins.iterdir():
        script.chmod(0o755)
    sweep_dir = tmp_path / "sweep"
    result = sweep(
        "-m",
        "hydra/launcher=slurm",
        "hydra/sweeper=basic",
        "hydra.launcher.partition=gpu-small",
        "beta=0.1,0.5",
        f"hydra.sweep.dir={sweep_dir}",
        home=tmp_path,
        path=f"{stand_ins}:{os.environ['PATH']}",
    )
    assert result.returncode == 1 and "sbatch: stand-in" in result.stderr
    options = {
        line.split()[1].split("=")[0]: line.split("=", 1)[1]
        for line in (tmp_path / "job.sbatch").read_text().splitlines()
        if line.startswith("#SBATCH --") and "=" in line
    }
    assert options["--array"] == "0-1%2"  # two jobs, at most min(2, array_parallelism) at once
    assert options["--partition"] == "gpu-small"
    assert (options["--gpus-per-node"], options["--ntasks-per-node"], options["--nodes"]) == ("1", "1", "1")
    assert (options["--cpus-per-task"], options["--time"], options["--job-name"]) == ("8", "1440", "train")
    assert "--account" not in options and "--mem" not in options  # null: the cluster's defaults
    assert _csv_rows(sweep_dir) == []


# --- every option composes --------------------------------------------------------------------------------------

OPTIONS = {
    "hydra/sweeper=optuna_search": "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper",
    "hydra/sweeper=optuna": "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper",
    "hydra/sweeper=basic": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
    "hydra/launcher=slurm": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
    "hydra/launcher=submitit_slurm": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
    "hydra/launcher=local": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
    "hydra/launcher=joblib": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
    "hydra/launcher=submitit_local": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher",
    "hydra/launcher=basic": "hydra._internal.core_plugins.basic_launcher.BasicLauncher",
}


@pytest.mark.parametrize("override", sorted(OPTIONS))
def test_every_sweeper_and_launcher_option_composes(override):
    """Ours (optuna_search, slurm, local) and the plugins' own options, side by side; the class imports."""
    group = override.split("=")[0].split("/")[1]
    cfg = compose(override, with_hydra=True)
    node = cfg.hydra[group]
    assert node._target_ == OPTIONS[override]
    assert get_class(node._target_)
    if override == "hydra/sweeper=optuna_search":
        assert (node.direction, node.sampler.seed, node.params.beta) == ("minimize", 0, "tag(log, interval(0.01, 1.0))")
    if override == "hydra/launcher=local":
        assert (node.n_jobs, node.backend, node.prefer) == (2, "loky", "processes")
    assert cfg.optimized_metric == "val/loss"


# --- the summary's parts ----------------------------------------------------------------------------------------


def test_a_job_that_died_without_a_summary_is_a_failed_row(tmp_path):
    for job, overrides in ((0, ["beta=0.1"]), (1, ["beta=0.5"])):
        hydra_dir = tmp_path / str(job) / ".hydra"
        hydra_dir.mkdir(parents=True)
        OmegaConf.save({"hydra": {"job": {"num": job}}}, hydra_dir / "hydra.yaml")
        OmegaConf.save(overrides, hydra_dir / "overrides.yaml")
    (tmp_path / "0" / "summary.json").write_text(json.dumps({"status": "completed", "metrics": {"val/loss": 0.5}}))
    done, killed = collect_jobs(tmp_path)
    assert (done.job, done.status, done.error, done.metrics) == (0, "completed", "", {"val/loss": 0.5})
    assert (killed.job, killed.status, killed.overrides) == (1, "failed", ["beta=0.5"])
    assert killed.error.startswith("no summary.json: the job's process ended before writing it")
    table = format_table([done, killed]).splitlines()
    assert table[0].split() == ["job", "status", "val/loss", "overrides"]
    assert table[1].split() == ["0", "completed", "0.5", "beta=0.1"] and table[2].split() == [
        "1",
        "failed",
        "-",
        "beta=0.5",
    ]


def test_objective_is_the_named_final_metric_or_none(caplog):
    summary = {"status": "completed", "metrics": {"val/loss": 0.25, "val/kl": "nan"}}
    assert objective(summary, "val/loss") == 0.25
    assert objective({**summary, "status": "failed"}, "val/loss") is None
    assert objective(summary, None) is None
    with caplog.at_level(logging.ERROR):
        assert objective(summary, "val/kl") is None  # NaN would make the Optuna plugin fail the whole study
        assert objective(summary, "val/reward") is None
    assert [record.getMessage() for record in caplog.records] == [
        "error: optimized_metric: val/kl is nan in this run",
        "error: optimized_metric: this run has no final 'val/reward'; it has: val/kl, val/loss",
    ]
