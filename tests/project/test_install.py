"""The installed package works from any folder: a wheel built from this checkout, installed into a fresh virtual
environment, gives a `dpo-train` that finds its configs and the tiny tokenizer outside the checkout."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest
from helpers import ROOT

from dpo_lightning.conf import CONF_DIR


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel of this checkout (no dependencies), built as `pip wheel .` builds it."""
    out = tmp_path_factory.mktemp("wheel")
    command = [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-w", str(out)]
    if int(version("setuptools").split(".")[0]) >= 77:  # the build backend is here: no download needed
        command.append("--no-build-isolation")
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (built,) = out.glob("dpo_lightning-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh virtual environment with the wheel installed; its dependencies are seen through a `.pth` line
    naming this environment's site-packages (no download, and no `.pth` of this environment is processed there,
    so the checkout's editable install stays invisible). Pip too comes from this environment, through that line
    (creating the environment without its own pip saves seconds). Returns the environment's `bin/`."""
    env = tmp_path_factory.mktemp("venv")
    venv.create(env, with_pip=False)
    bin_dir = env / "bin"
    purelib = subprocess.run(
        [bin_dir / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(purelib, "outer_site_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = [bin_dir / "python", "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)]
    result = subprocess.run(install, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return bin_dir


def _run(bin_dir: Path, folder: Path, *arguments: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    return subprocess.run(
        [bin_dir / "dpo-train", *arguments], cwd=folder, env=env, capture_output=True, text=True, timeout=600
    )


def test_the_wheel_holds_every_config_and_the_tiny_tokenizer(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {f"dpo_lightning/conf/{path.relative_to(CONF_DIR)}" for path in CONF_DIR.rglob("*.yaml")}
    assert configs and configs <= names, sorted(configs - names)[:5]
    assert "dpo_lightning/assets/tiny_tokenizer/tokenizer.json" in names


def test_installed_dpo_train_works_from_an_empty_folder(installed, tmp_path):
    where = subprocess.run(
        [installed / "python", "-c", "import dpo_lightning; print(dpo_lightning.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert str(ROOT) not in where and str(installed.parent) in where  # the installed copy, not the checkout

    shown = _run(installed, tmp_path, "--help")
    assert shown.returncode == 0 and "task" in shown.stdout and "loss" in shown.stdout, shown.stderr[-2000:]

    job = _run(installed, tmp_path, "--cfg", "job", "task=tldr", "model=gptj", "beta=0.5")
    assert job.returncode == 0, job.stderr[-2000:]
    assert "beta: 0.5" in job.stdout and "EleutherAI/gpt-j-6b" in job.stdout

    small = ["trainer.max_steps=2", "task.source.num_train_pairs=32", "task.source.num_val_pairs=8"]
    trained = _run(installed, tmp_path, *small, "samples.num_prompts=2", "hydra.run.dir=run")
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert (tmp_path / "run" / "policy" / "model.safetensors").is_file()
    assert (tmp_path / "run" / "summary.json").is_file()
    assert list(tmp_path.iterdir()) == [tmp_path / "run"]  # nothing written outside the run folder
