"""`python -m dpo_lightning.cli.winrate`: samples files, counts, Wilson intervals, judges, bad input."""

from __future__ import annotations

import csv
import json
import math
import subprocess
from pathlib import Path

import pytest
from helpers import (
    JUDGE_KEY,
    JUDGE_KEY_ENV,
    FakeChatServer,
    compose,
    reference_logits,
    run_in_process,
    save_tiny_classifier,
)
from omegaconf import OmegaConf

from dpo_lightning.cli import winrate as winrate_command
from dpo_lightning.conf import CONF_DIR
from dpo_lightning.errors import ConfigError, DataError
from dpo_lightning.eval.judges import Judge, Verdict
from dpo_lightning.eval.winrate import (
    Tally,
    build_judge,
    evaluate,
    find_samples,
    read_samples,
    validate_winrate_config,
    wilson_interval,
    win_rates,
)

COLUMNS = ["prompt", "policy", "reference", "chosen", "policy_reward", "reference_reward"]
JUDGE_OPTIONS = sorted(p.stem for p in (CONF_DIR / "judge").glob("*.yaml"))


def write_samples(run_dir: Path, step: int, rows: list[dict[str, str]]) -> Path:
    """`run_dir/samples/step_XXXXXX.csv` as training writes it (every column, strings)."""
    path = run_dir / "samples" / f"step_{step:06d}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows([{"policy_reward": "0.5", "reference_reward": "0.25", **row} for row in rows])
    return path


def wilson_by_bisection(successes: float, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson's definition solved numerically: the p in [0, 1] with |p̂ − p| ≤ z·√(p(1 − p)/n)."""
    p_hat = successes / n

    def inside(p: float) -> bool:
        return abs(p_hat - p) <= z * math.sqrt(p * (1 - p) / n)

    def edge(low: float, high: float) -> float:  # `inside` changes between low and high
        for _ in range(200):
            middle = (low + high) / 2
            low, high = (middle, high) if inside(middle) != inside(high) else (low, middle)
        return (low + high) / 2

    return (edge(0.0, p_hat) if p_hat > 0 else 0.0), (edge(p_hat, 1.0) if p_hat < 1 else 1.0)


# Wilson score interval


@pytest.mark.parametrize(
    ("successes", "n", "published"),
    # Newcombe (1998), Statistics in Medicine 17:857, Table I, method 3 (score interval without continuity correction)
    [(81, 263, (0.2553, 0.3662)), (15, 148, (0.0624, 0.1605)), (0, 20, (0.0, 0.1611)), (1, 29, (0.0061, 0.1718))],
)
def test_wilson_interval_matches_published_values_and_its_definition(successes, n, published):
    interval = wilson_interval(successes, n)
    assert interval == pytest.approx(published, abs=5e-5)
    assert interval == pytest.approx(wilson_by_bisection(successes, n), abs=1e-9)


@pytest.mark.parametrize(("successes", "n"), [(7.5, 12), (10, 10), (0.5, 1), (33, 40)])
def test_wilson_interval_with_half_ties_and_edges(successes, n):
    assert wilson_interval(successes, n) == pytest.approx(wilson_by_bisection(successes, n), abs=1e-9)
    assert wilson_interval(0, 0) is None


def test_tally_counts_ties_as_half_wins():
    tally = Tally()
    for outcome in ["first"] * 5 + ["second"] * 3 + ["tie"] * 2:
        tally.add(Verdict(outcome))
    tally.add(Verdict("failed", "HTTP 500"))
    tally.add(Verdict("failed", "HTTP 500"))
    tally.add(Verdict("failed", "timeout after 30 s"))
    report = tally.to_json()
    assert (report["wins"], report["losses"], report["ties"], report["failed"], report["n"]) == (5, 3, 2, 3, 10)
    assert report["comparisons"] == 13
    assert report["win_rate"] == pytest.approx(0.6)
    assert report["ci95"] == pytest.approx(list(wilson_by_bisection(6, 10)), abs=1e-9)
    assert report["failed_reasons"] == {"HTTP 500": 2, "timeout after 30 s": 1}


# Samples files


def test_the_latest_samples_file_unless_a_step_is_given(tmp_path):
    for step in (20, 100, 3):
        write_samples(tmp_path, step, [{"prompt": "p", "policy": "a", "reference": "b", "chosen": ""}])
    (tmp_path / "samples" / "step_000200.csv.tmp").write_text("partial")
    assert find_samples(tmp_path) == (tmp_path / "samples" / "step_000100.csv", 100)
    assert find_samples(tmp_path, 20) == (tmp_path / "samples" / "step_000020.csv", 20)
    with pytest.raises(
        ConfigError, match=r"^step: .*samples: no samples of step 7; steps with samples: \[3, 20, 100\]$"
    ):
        find_samples(tmp_path, 7)


def test_missing_run_folder_samples_and_columns_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match=f"^run_dir: {tmp_path / 'nope'}: no such folder$"):
        find_samples(tmp_path / "nope")
    with pytest.raises(DataError, match=f"^{tmp_path / 'samples'}: no samples file"):
        find_samples(tmp_path)
    path = tmp_path / "samples" / "step_000001.csv"
    path.parent.mkdir()
    path.write_text("prompt,policy,reference\np,a,b\n")
    with pytest.raises(DataError) as error:
        read_samples(path, ["prompt", "policy", "reference", "chosen"])
    assert str(error.value) == f"{path}: missing column(s) ['chosen']; found ['prompt', 'policy', 'reference']"


def _winrate_cfg(*overrides: str):
    return compose(*overrides, config="winrate")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ([], "run_dir: required but not set"),
        (["run_dir=r"], "judge.name_or_path: required but not set"),
        (["run_dir=r", "judge.name_or_path=m", "opponents=[reference,rejected]"], "opponents: unknown opponent"),
        (["run_dir=r", "judge.name_or_path=m", "opponents=[]"], "opponents: must name at least one"),
        (["run_dir=r", "judge.name_or_path=m", "max_comparisons=0"], "max_comparisons: must be ≥ 1 or null"),
        (["run_dir=r", "judge.name_or_path=m", "step=-1"], "step: must be a global step ≥ 0 or null"),
        (["run_dir=r", "judge=llm"], "judge.model: required but not set"),
    ],
)
def test_bad_config_values_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as error:
        validate_winrate_config(_winrate_cfg(*overrides))
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


# Counting


class LengthJudge(Judge):
    """The longer response wins; equal lengths tie; an empty prompt fails."""

    name = "length"

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []

    def compare(self, prompt: str, first: str, second: str) -> Verdict:
        self.seen.append((prompt, first, second))
        if not prompt:
            return Verdict("failed", "no prompt")
        return Verdict("tie" if len(first) == len(second) else "first" if len(first) > len(second) else "second")


def test_win_rates_skip_empty_opponents_and_subsample_the_same_rows():
    rows = [
        {"prompt": f"p{i}", "policy": "x" * (i % 5), "reference": "xx" if i % 3 else "", "chosen": "xxx"}
        for i in range(30)
    ]
    rows[4]["prompt"] = ""
    results = win_rates(rows, LengthJudge(), ["reference", "chosen"])
    for opponent, tally in results.items():
        compared = [r for r in rows if r[opponent]]
        decided = [r for r in compared if r["prompt"]]
        wins = sum(len(r["policy"]) > len(r[opponent]) for r in decided)
        ties = sum(len(r["policy"]) == len(r[opponent]) for r in decided)
        expected = (wins, len(decided) - wins - ties, ties, len(compared) - len(decided), len(rows) - len(compared))
        assert (tally.wins, tally.losses, tally.ties, tally.failed, tally.unavailable) == expected
    assert results["reference"].failed_reasons == {"no prompt": 1}

    judge = LengthJudge()
    subset = win_rates(rows, judge, ["reference", "chosen"], max_comparisons=8, seed=1)
    assert [subset[o].n + subset[o].failed for o in ("reference", "chosen")] == [8, 8] and len(judge.seen) == 16
    reference_rows, chosen_rows = {p for p, _, _ in judge.seen[:8]}, {p for p, _, _ in judge.seen[8:]}
    has_reference = {r["prompt"] for r in rows if r["reference"]}
    assert reference_rows <= has_reference
    assert chosen_rows & has_reference <= reference_rows  # one shuffle: a row picked for both where both exist
    assert chosen_rows != {r["prompt"] for r in rows[:8]}  # a random subset, not the first rows
    again = LengthJudge()
    win_rates(rows, again, ["reference", "chosen"], max_comparisons=8, seed=1)
    assert again.seen == judge.seen
    other = LengthJudge()
    win_rates(rows, other, ["reference", "chosen"], max_comparisons=8, seed=2)
    assert other.seen != judge.seen


# The command


def winrate(*overrides: str) -> subprocess.CompletedProcess:
    """`python -m dpo_lightning.cli.winrate <overrides>`: the command's entry point, called in-process."""
    return run_in_process(winrate_command.main, *overrides, program="dpo_lightning/cli/winrate.py")


SAMPLE_ROWS = [
    {"prompt": "Review: ", "policy": "a fine film", "reference": "dull and slow", "chosen": "great"},
    {"prompt": "Review: ", "policy": "meh", "reference": "the best movie of the year!", "chosen": ""},
    {"prompt": "Q: why?\n", "policy": 'because, "quoted"\nand on', "reference": "no idea", "chosen": "it is so"},
    {"prompt": "Q: why?\n", "policy": "same answer", "reference": "same answer", "chosen": "another"},
    {"prompt": "Tell me: ", "policy": "ok", "reference": "", "chosen": "a long careful reply"},
    {"prompt": "Tell me: ", "policy": "sure thing", "reference": "nope", "chosen": "yes"},
    {"prompt": "Hi ", "policy": "hello there friend", "reference": "hey", "chosen": "hello"},
    {"prompt": "Hi ", "policy": "", "reference": "hi back", "chosen": "greetings"},
]


def test_the_command_counts_what_the_reward_model_scores(tmp_path):
    model = save_tiny_classifier(tmp_path / "reward_model", id2label={0: "LABEL_0"}, seed=1)
    run = tmp_path / "run"
    write_samples(run, 100, [{"prompt": "x", "policy": "y", "reference": "z", "chosen": "w"}])  # older
    write_samples(run, 250, SAMPLE_ROWS)
    result = winrate(f"run_dir={run}", f"judge.name_or_path={model}", "judge.batch_size=3")
    assert result.returncode == 0, result.stderr
    report = json.loads((run / "winrate.json").read_text())
    assert (run / "winrate_step_000250.json").read_text() == (run / "winrate.json").read_text()
    assert (report["step"], report["samples"], report["rows"]) == (250, "samples/step_000250.csv", 8)
    assert report["judge"]["name"] == "reward_model"
    assert report["judge"]["config"]["name_or_path"] == str(model)

    texts = sorted({r["prompt"] + r[c] for r in SAMPLE_ROWS for c in ("policy", "reference", "chosen")})
    score = dict(zip(texts, reference_logits(model, texts)[:, 0].tolist(), strict=True))  # float64, one at a time
    for opponent in ("reference", "chosen"):
        pairs = [
            (score[r["prompt"] + r["policy"]], score[r["prompt"] + r[opponent]]) for r in SAMPLE_ROWS if r[opponent]
        ]
        assert all(abs(a - b) > 1e-4 or a == b for a, b in pairs)  # float32 vs float64 cannot flip a verdict
        wins, losses, ties = sum(a > b for a, b in pairs), sum(a < b for a, b in pairs), sum(a == b for a, b in pairs)
        got = report["opponents"][opponent]
        assert (got["wins"], got["losses"], got["ties"], got["failed"], got["n"]) == (wins, losses, ties, 0, len(pairs))
        assert got["unavailable"] == len(SAMPLE_ROWS) - len(pairs)
        assert got["win_rate"] == pytest.approx((wins + ties / 2) / len(pairs))
        assert got["ci95"] == pytest.approx(list(wilson_by_bisection(wins + ties / 2, len(pairs))), abs=1e-9)
    assert report["opponents"]["reference"]["ties"] == 1  # "same answer" against itself
    assert "reference" in result.stdout and "win rate" in result.stdout


def test_a_run_without_samples_exits_2_with_one_line(tmp_path):
    (tmp_path / "run").mkdir()
    result = winrate(f"run_dir={tmp_path / 'run'}", "judge.name_or_path=unused")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'run' / 'samples'}: no samples file (step_XXXXXX.csv, written at each validation)"
    ]
    assert list((tmp_path / "run").iterdir()) == []


def test_the_llm_judges_key_reaches_no_output(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(JUDGE_KEY_ENV, JUDGE_KEY)
    rows = [
        {"prompt": f"q{i}", "policy": f"p{i} GOOD" if i < 4 else f"p{i}", "reference": f"r{i}" + (" GOOD" * (i >= 4))}
        for i in range(6)
    ]
    for i, row in enumerate(rows):
        row["chosen"] = "" if i == 5 else f"c{i}" + (" GOOD" * (i >= 4))
    write_samples(tmp_path, 8, rows)
    with FakeChatServer(modes=["500", "500"]) as server:  # the error bodies echo the Authorization header
        cfg = _winrate_cfg(
            f"run_dir={tmp_path}",
            "judge=llm",
            f"judge.url={server.url}",
            "judge.model=judge-model",
            f"judge.api_key_env={JUDGE_KEY_ENV}",
            "judge.max_retries=0",
            "judge.concurrency=1",
        )
        report = evaluate(cfg)
    assert {r["authorization"] for r in server.requests} == {f"Bearer {JUDGE_KEY}"}
    reference, chosen = report["opponents"]["reference"], report["opponents"]["chosen"]
    assert (reference["wins"], reference["losses"], reference["failed"]) == (2, 2, 2)
    assert reference["failed_reasons"] == {"HTTP 500": 2}
    assert (chosen["wins"], chosen["losses"], chosen["failed"], chosen["unavailable"]) == (4, 1, 0, 1)
    assert report["judge"]["name"] == "llm" and report["judge"]["config"]["api_key_env"] == JUDGE_KEY_ENV
    written = (tmp_path / "winrate.json").read_text()
    assert json.loads(written) == report
    assert JUDGE_KEY not in written and JUDGE_KEY not in capsys.readouterr().out


@pytest.mark.parametrize("option", JUDGE_OPTIONS)
def test_every_judge_option_composes_and_builds(option, tmp_path):
    required = {
        "reward_model": [f"judge.name_or_path={save_tiny_classifier(tmp_path / 'rm', {0: 'LABEL_0'})}"],
        "llm": ["judge.model=judge-model", "judge.url=http://127.0.0.1:9/v1"],
    }
    cfg = _winrate_cfg("run_dir=r", f"judge={option}", *required[option])
    validate_winrate_config(cfg)
    OmegaConf.to_container(cfg, resolve=True)
    judge = build_judge(cfg.judge)
    assert isinstance(judge, Judge) and judge.name == option
    if option == "reward_model":
        assert cfg.judge.trust_remote_code is False
    assert set(JUDGE_OPTIONS) == {"reward_model", "llm"}
