"""`python -m dpo_lightning.cli.pairs`: ranking samples, task prompts, the command end to end on a tiny random
policy (pairs = argmax/argmin of VADER rescoring, provenance, readable by task=local, seeded), bad configs."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from helpers import ROOT, compose, offline_env, run_in_process, write_jsonl
from omegaconf import OmegaConf

from dpo_lightning.cli import pairs as pairs_command
from dpo_lightning.conf import CONF_DIR
from dpo_lightning.data.prompts import task_prompts
from dpo_lightning.data.sources.local import LocalSource
from dpo_lightning.data.sources.sentiment import generate_sentiment_pairs
from dpo_lightning.errors import ConfigError
from dpo_lightning.eval.pairs import best_and_worst, check_pairs_config
from dpo_lightning.eval.rewards import VaderReward, sentiment_reward
from dpo_lightning.eval.sampling import SamplingSettings
from dpo_lightning.instantiate import build
from dpo_lightning.models.loading import build_model, load_tokenizer
from dpo_lightning.models.reference_cache import weights_fingerprint
from dpo_lightning.runtime.export import export_policy

LABELLER = VaderReward()  # what labels task=sentiment's pairs


SPLITS = ("train", "validation")
PROMPTS = {"train": 12, "validation": 4}
K = 3
SENTIMENT = {"num_train_pairs": 40, "num_val_pairs": 10, "seed": 1234, "min_margin": 0.3}  # task=sentiment, smaller
TINY = [
    f"num_prompts.train={PROMPTS['train']}",
    f"num_prompts.validation={PROMPTS['validation']}",
    f"samples_per_prompt={K}",
    "sampling.max_new_tokens=8",
    *(f"task.source.{key}={value}" for key, value in SENTIMENT.items()),
]
TRIPLE = ("prompt", "chosen", "rejected")


def pairs(*overrides: str, run_dir: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m dpo_lightning.cli.pairs <overrides> hydra.run.dir=<run_dir>`, offline."""
    command = [sys.executable, "-m", "dpo_lightning.cli.pairs", *overrides, f"hydra.run.dir={run_dir}"]
    return subprocess.run(command, cwd=ROOT, env=offline_env(), capture_output=True, text=True, timeout=timeout)


def read_rows(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


@pytest.fixture(scope="module")
def policy(tmp_path_factory) -> tuple[Path, str]:
    """A tiny random-init policy saved as a model folder, and the fingerprint of the weights that were saved."""
    model_config = OmegaConf.to_container(compose("policy=unused", config="pairs").model, resolve=True)
    model = build_model(model_config)
    folder = export_policy(model, load_tokenizer(model_config), tmp_path_factory.mktemp("policy"))
    return folder, weights_fingerprint(model)


@pytest.fixture(scope="module")
def generated(policy, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pairs")
    result = pairs(f"policy={policy[0]}", *TINY, run_dir=out)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


# --- best_and_worst ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scores", "min_margin", "expected"),
    [
        ([0.1, 0.5, -0.2], 0.0, (1, 2)),
        ([0.5, 0.1, 0.5, -0.2, -0.2], 0.0, (0, 3)),  # the first of equal maxima, the first of equal minima
        ([-0.3, 0.0, 0.7, 0.7], 0.0, (2, 0)),
        ([0.25, 0.25, 0.25], 0.0, None),  # all equal: a tie whatever the margin
        ([0.0, 0.0], 0.0, None),
        ([0.0, 0.2, 0.1], 0.3, None),  # gap 0.2 < min_margin
        ([0.0, 0.5, 0.1], 0.5, (1, 0)),  # gap == min_margin is enough
        ([-1.0, 1.0], 1.5, (1, 0)),
    ],
)
def test_best_and_worst(scores, min_margin, expected):
    assert best_and_worst(scores, min_margin) == expected


# --- task_prompts --------------------------------------------------------------------------------------------


def test_task_prompts_of_the_sentiment_task_are_its_prompts_in_data_order():
    sentiment = (f"task.source.{key}={value}" for key, value in SENTIMENT.items())
    cfg = compose("policy=unused", *sentiment, config="pairs")
    source = build(cfg.task.source, "task.source")
    total = SENTIMENT["num_train_pairs"] + SENTIMENT["num_val_pairs"]
    rows = generate_sentiment_pairs(total, SENTIMENT["seed"], SENTIMENT["min_margin"], labeller=LABELLER)
    expected = {"train": rows[: SENTIMENT["num_train_pairs"]], "validation": rows[SENTIMENT["num_train_pairs"] :]}
    for split in SPLITS:
        prompts = list(task_prompts(source, split))
        assert prompts == list(dict.fromkeys(row["prompt"] for row in expected[split])), split
        assert len(prompts) == len(set(prompts))


def test_task_prompts_of_a_text_task_are_distinct_usable_and_in_order(tmp_path):
    rows = [
        {"prompt": "b", "chosen": " x", "rejected": " y"},
        {"prompt": "a", "chosen": " x", "rejected": " y"},
        {"prompt": "b", "chosen": " z", "rejected": " w"},
        {"prompt": None, "chosen": " x", "rejected": " y"},  # unusable: no prompt
        {"prompt": "c", "chosen": " x", "rejected": " y"},
    ]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    (data.parent / "broken.jsonl").write_text(data.read_text() + "{not json\n")
    skipped = Counter()
    source = LocalSource(str(data.parent / "broken.jsonl"), val_path=str(data))
    assert list(task_prompts(source, "train", skipped)) == ["b", "a", "c"]
    assert skipped == {"prompt: missing": 1, "malformed JSON": 1}  # left out, and counted


def test_task_prompts_of_a_conversational_task_is_a_config_error(tmp_path):
    def message(role: str, content: str) -> dict:
        return {"role": role, "content": content}

    rows = [
        {
            "prompt": [message("user", f"Question {i}?")],
            "chosen": [message("assistant", "Yes.")],
            "rejected": [message("assistant", "No.")],
        }
        for i in range(3)
    ]
    data = write_jsonl(tmp_path / "chat.jsonl", rows)
    with pytest.raises(ConfigError) as error:
        next(task_prompts(LocalSource(str(data), val_path=str(data)), "train"))
    assert error.value.key == "task" and "conversations" in str(error.value) and "\n" not in str(error.value)


# --- the command end to end ----------------------------------------------------------------------------------


def test_pairs_are_the_best_and_worst_of_rescored_samples(generated):
    assert {p.name for p in generated.iterdir()} >= {"train.parquet", "validation.parquet", "provenance.json"}
    provenance = json.loads((generated / "provenance.json").read_text())
    ranked = 0
    for split in SPLITS:
        rows = read_rows(generated / f"{split}.parquet")
        counts = provenance["splits"][split]
        assert counts["prompts"] == PROMPTS[split] == counts["pairs"] + counts["ties"] + counts["too_few_samples"]
        assert counts["pairs"] == len(rows) >= 1, split
        # Empty samples are left out of a row's responses (and counted).
        assert sum(K - len(row["responses"]) for row in rows) <= counts["empty_samples"], split
        for index, row in enumerate(rows):
            where = f"{split} row {index}"
            n = len(row["responses"])
            assert 2 <= n == len(row["scores"]) <= K, where
            assert all(response.strip() for response in row["responses"]), where
            assert row["scores"] == [sentiment_reward(row["prompt"], r) for r in row["responses"]], where
            best = max(range(n), key=lambda i: (row["scores"][i], -i))  # highest score, first of equals
            worst = min(range(n), key=lambda i: (row["scores"][i], i))  # lowest score, first of equals
            assert row["scores"][best] > row["scores"][worst], where  # min_margin 0: a pair means a gap
            assert (row["chosen"], row["rejected"]) == (row["responses"][best], row["responses"][worst]), where
            assert (row["chosen_reward"], row["rejected_reward"]) == (row["scores"][best], row["scores"][worst])
            ranked += 1
        # The pairs' prompts are the split's first prompts, in data order (tied prompts left out).
        first = list(task_prompts(build(provenance["task"]["source"], "task.source"), split))
        first = first[: PROMPTS[split]]
        positions = [first.index(row["prompt"]) for row in rows]
        assert positions == sorted(set(positions)), split
    assert ranked == sum(provenance["splits"][split]["pairs"] for split in SPLITS)


def test_provenance_names_policy_weights_settings_and_is_in_each_file(generated, policy):
    folder, saved_fingerprint = policy
    provenance = json.loads((generated / "provenance.json").read_text())
    model_config = OmegaConf.to_container(compose("policy=unused", config="pairs").model, resolve=True)
    loaded = build_model({**model_config, "init_from": str(folder)})
    assert provenance["policy_weights"] == weights_fingerprint(loaded) == saved_fingerprint
    assert provenance["policy"] == str(folder.resolve())
    assert provenance["samples_per_prompt"] == K and provenance["min_margin"] == 0.0
    assert provenance["sampling"]["max_new_tokens"] == 8
    assert provenance["reward"]["_target_"] == "dpo_lightning.eval.rewards.VaderReward"
    source = provenance["task"]["source"]
    assert {k: source[k] for k in SENTIMENT} == SENTIMENT and "reward" not in provenance["task"]
    assert set(provenance["splits"]) == set(SPLITS)
    for split in SPLITS:
        metadata = pq.read_schema(generated / f"{split}.parquet").metadata
        in_file = json.loads(metadata[b"dpo_lightning.provenance"])
        assert in_file == {**provenance, "splits": {split: provenance["splits"][split]}, "split": split}, split


def test_task_local_reads_the_pairs(generated):
    files = {split: generated / f"{split}.parquet" for split in SPLITS}
    cfg = compose("task=local", f"task.source.path={files['train']}", f"task.source.val_path={files['validation']}")
    source = build(cfg.task.source, "task.source")
    for split in SPLITS:
        loaded = source.load(split).to_list()
        expected = [{k: row[k] for k in TRIPLE} for row in read_rows(files[split])]
        assert [{k: row[k] for k in TRIPLE} for row in loaded] == expected, split
        assert all(r["problem"] == "" for r in loaded), split


def test_task_local_reads_the_samples_as_rankings(generated):
    """The same files as ranked data: every prompt's K scored samples (`task.source.responses_column=responses`)."""
    files = {split: generated / f"{split}.parquet" for split in SPLITS}
    cfg = compose(
        "task=local", f"task.source.path={files['train']}", f"task.source.val_path={files['validation']}",
        "task.source.responses_column=responses",
    )  # fmt: skip
    source = build(cfg.task.source, "task.source")
    for split in SPLITS:
        loaded = source.load(split).to_list()
        expected = [(row["prompt"], row["responses"], row["scores"]) for row in read_rows(files[split])]
        assert [(row["prompt"], row["responses"], row["scores"]) for row in loaded] == expected, split
        assert all(r["problem"] == "" and len(r["responses"]) >= 2 for r in loaded), split


def test_the_same_seed_gives_the_same_pairs(generated, policy, tmp_path):
    again = pairs(f"policy={policy[0]}", *TINY, run_dir=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    for split in SPLITS:
        assert read_rows(tmp_path / f"{split}.parquet") == read_rows(generated / f"{split}.parquet"), split
    counts = [json.loads((out / "provenance.json").read_text())["splits"] for out in (generated, tmp_path)]
    for split_counts in counts:
        for split in SPLITS:
            split_counts[split].pop("seconds")
    assert counts[0] == counts[1]


# --- bad configs ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["policy=POLICY", "samples_per_prompt=1"], "error: samples_per_prompt: must be an integer ≥ 2, got 1"),
        (
            ["policy=POLICY", "task=local", "task.source.path=DATA"],
            "error: task.reward: pair generation ranks samples by the task's reward; this task has none",
        ),
        (
            ["policy=EMPTY"],
            "error: policy: EMPTY is neither a run folder with policy/ nor a model folder (no config.json in either)",
        ),
        (["policy=POLICY", "task=nope"], "error: task: unknown option 'nope'; choose one of: "),
    ],
)
def test_config_mistakes_exit_2_with_one_line(overrides, message, policy, tmp_path):
    """The command's entry point called in-process with each mistake on its command line."""
    empty = tmp_path / "empty"
    empty.mkdir()
    data = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": " c", "rejected": " r"}] * 3)
    names = {"POLICY": str(policy[0]), "EMPTY": str(empty), "DATA": str(data)}
    for name, value in names.items():
        overrides = [o.replace(name, value) for o in overrides]
        message = message.replace(name, value)
    command = [*overrides, f"hydra.run.dir={tmp_path / 'out'}"]
    result = run_in_process(pairs_command.main, *command, program="dpo_lightning/cli/pairs.py")
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), result.stderr[-3000:]
    assert not list(tmp_path.glob("out/*.parquet"))


# --- the config ----------------------------------------------------------------------------------------------


def test_every_key_of_the_pairs_config_composes_and_checks(policy):
    cfg = compose(f"policy={policy[0]}", config="pairs")
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    raw = yaml.safe_load((CONF_DIR / "pairs.yaml").read_text())
    groups = [next(iter(entry)) for entry in raw["defaults"] if isinstance(entry, dict)]
    own = set(raw) - {"defaults", "hydra"}
    assert set(cfg) == own | (set(groups) - {"hydra"})
    for key, value in raw.items():
        if key in own and key != "policy":
            assert OmegaConf.to_container(cfg)[key] == value, key
    SamplingSettings(**cfg.sampling)  # every sampling key is a sampling setting
    check_pairs_config(cfg)

    missing = compose(f"policy={policy[0]}/no/such/folder", config="pairs")
    with pytest.raises(ConfigError) as error:
        check_pairs_config(missing)
    assert error.value.key == "policy" and f"{policy[0]}/no/such/folder" in str(error.value)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ([], "policy"),  # required, not set
        (["samples_per_prompt=2.5"], "samples_per_prompt"),
        (["min_margin=-0.1"], "min_margin"),
        (["num_prompts.train=0"], "num_prompts.train"),
        (["+num_prompts.test=3"], "num_prompts.test"),
    ],
)
def test_config_checks_name_the_key(overrides, key, policy):
    policy_override = [] if key == "policy" else [f"policy={policy[0]}"]
    with pytest.raises(ConfigError) as error:
        check_pairs_config(compose(*policy_override, *overrides, config="pairs"))
    assert error.value.key == key and str(error.value).startswith(f"{key}: ") and "\n" not in str(error.value)


TASKS = sorted(p.stem for p in (CONF_DIR / "task").glob("*.yaml"))


def task_reward(task: str) -> str:
    """The reward option a task's YAML names in its defaults list."""
    defaults = yaml.safe_load((CONF_DIR / "task" / f"{task}.yaml").read_text())["defaults"]
    return next(entry["/reward@reward"] for entry in defaults if isinstance(entry, dict) and "/reward@reward" in entry)


@pytest.mark.parametrize("task", TASKS)
def test_every_task_with_a_reward_is_accepted(task, policy, tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": " c", "rejected": " r"}] * 3)
    path = [f"task.source.path={data}"] if task in ("local", "prompts") else []
    cfg = compose(f"policy={policy[0]}", f"task={task}", *path, config="pairs")
    if task_reward(task) == "none":
        with pytest.raises(ConfigError) as error:
            check_pairs_config(cfg)
        assert error.value.key == "task.reward"
    else:
        check_pairs_config(cfg)
    assert {"sentiment", "imdb"} <= {t for t in TASKS if task_reward(t) != "none"}
