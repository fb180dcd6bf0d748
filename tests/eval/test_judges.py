"""ClassifierScorer, RewardModelJudge and LLMJudge (against a local fake OpenAI-compatible server)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from helpers import JUDGE_KEY, JUDGE_KEY_ENV, FakeChatServer, reference_logits, save_tiny_classifier, softmax_column

from dpo_lightning.errors import ConfigError
from dpo_lightning.eval.classifier import ClassifierScorer
from dpo_lightning.eval.judges import LLMJudge, RewardModelJudge, Verdict, parse_final_answer

TEXTS = ["a fine film", "dull, slow and far too long for what it has to say", "ok", "the best movie of the year!"]


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory) -> Path:
    return save_tiny_classifier(tmp_path_factory.mktemp("classifier"))


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory) -> Path:
    return save_tiny_classifier(tmp_path_factory.mktemp("reward_model"), id2label={0: "LABEL_0"}, seed=1)


# ClassifierScorer


@pytest.mark.parametrize("batch_size", [1, 3, 32])
def test_scores_are_the_softmax_probability_of_the_positive_label(classifier_dir, batch_size):
    scores = ClassifierScorer(str(classifier_dir), batch_size=batch_size).scores(TEXTS)
    expected = softmax_column(reference_logits(classifier_dir, TEXTS), column=1)
    assert scores == pytest.approx(expected, abs=1e-5)
    assert len(set(scores)) == len(TEXTS)  # the scores really differ between texts
    negative = ClassifierScorer(str(classifier_dir), positive_label="NEGATIVE").scores(TEXTS)
    assert [p + n for p, n in zip(scores, negative, strict=True)] == pytest.approx([1.0] * len(TEXTS), abs=1e-6)


@pytest.mark.parametrize(("side", "keep"), [("right", "start"), ("left", "end")])
def test_long_texts_are_cut_to_max_length(classifier_dir, side, keep):
    texts = [TEXTS[1] * 3, TEXTS[0]]
    scores = ClassifierScorer(str(classifier_dir), max_length=6, truncation_side=side).scores(texts)
    assert scores == pytest.approx(softmax_column(reference_logits(classifier_dir, texts, 6, keep), 1), abs=1e-5)
    assert scores[0] != pytest.approx(softmax_column(reference_logits(classifier_dir, texts[:1]), 1)[0], abs=1e-5)


def test_a_reward_model_scores_with_its_raw_logit(reward_model_dir):
    scores = ClassifierScorer(str(reward_model_dir), positive_label=None, batch_size=2).scores(TEXTS)
    assert scores == pytest.approx(reference_logits(reward_model_dir, TEXTS)[:, 0].tolist(), abs=1e-5)


def test_labels_without_the_positive_class_fail_in_one_line(tmp_path):
    path = save_tiny_classifier(tmp_path / "m", id2label={0: "neg", 1: "pos"})
    with pytest.raises(ConfigError) as error:
        ClassifierScorer(str(path), config_key="task.reward.positive_label")
    assert str(error.value) == f"task.reward.positive_label: {path} has labels ['neg', 'pos']; none is 'POSITIVE'"
    assert error.value.key == "task.reward.positive_label"


def test_positive_label_must_fit_the_number_of_outputs(classifier_dir, reward_model_dir):
    with pytest.raises(ConfigError, match=r"^positive_label: .* has labels \['NEGATIVE', 'POSITIVE'\]; name the one"):
        ClassifierScorer(str(classifier_dir), positive_label=None)
    with pytest.raises(ConfigError, match=r"^judge.positive_label: .* single-output reward model"):
        ClassifierScorer(str(reward_model_dir), positive_label="LABEL_0", config_key="judge.positive_label")


def test_a_missing_model_names_the_key_and_path(tmp_path):
    with pytest.raises(ConfigError) as error:
        ClassifierScorer(str(tmp_path / "nowhere"), config_key="judge.positive_label")
    assert str(error.value).startswith(f"judge.name_or_path: cannot load '{tmp_path / 'nowhere'}'")
    assert "\n" not in str(error.value)


# RewardModelJudge


def test_reward_model_verdicts_follow_the_scores(classifier_dir):
    prompts = ["Review: ", "Review: ", "Q? ", "Q? ", "Same "]
    firsts = [TEXTS[0], TEXTS[1], TEXTS[2], TEXTS[3], "identical answer"]
    seconds = [TEXTS[1], TEXTS[0], TEXTS[3], TEXTS[2], "identical answer"]
    judge = RewardModelJudge(str(classifier_dir), positive_label="POSITIVE", batch_size=2)
    verdicts = judge.compare_many(prompts, firsts, seconds)
    first = softmax_column(reference_logits(classifier_dir, [p + r for p, r in zip(prompts, firsts, strict=True)]), 1)
    second = softmax_column(reference_logits(classifier_dir, [p + r for p, r in zip(prompts, seconds, strict=True)]), 1)
    expected = [
        "tie" if abs(a - b) < 1e-12 else "first" if a > b else "second" for a, b in zip(first, second, strict=True)
    ]
    assert [v.outcome for v in verdicts] == expected
    assert {"first", "second", "tie"} <= set(expected)  # every outcome exercised
    assert [judge.compare(p, f, s) for p, f, s in zip(prompts, firsts, seconds, strict=True)] == verdicts


# LLMJudge against a fake OpenAI-compatible server


def _llm_judge(url: str, **options) -> LLMJudge:
    options = {"model": "judge-model", "api_key_env": JUDGE_KEY_ENV, "retry_backoff_s": 0.0, **options}
    return LLMJudge(url, **options)


def _good_first_or_second(count: int) -> tuple[list[str], list[str], list[str], list[str]]:
    """Prompts q0…, responses where GOOD is in the first for even i and in the second for odd i, and the truth."""
    prompts = [f"q{i}" for i in range(count)]
    firsts = [f"answer {i} GOOD" if i % 2 == 0 else f"answer {i} meh" for i in range(count)]
    seconds = [f"answer {i} meh" if i % 2 == 0 else f"answer {i} GOOD" for i in range(count)]
    truth = ["first" if i % 2 == 0 else "second" for i in range(count)]
    return prompts, firsts, seconds, truth


@pytest.mark.parametrize("concurrency", [1, 4])
def test_llm_answers_are_mapped_back_through_the_random_order(concurrency, monkeypatch):
    monkeypatch.setenv(JUDGE_KEY_ENV, JUDGE_KEY)
    prompts, firsts, seconds, truth = _good_first_or_second(24)
    with FakeChatServer() as server:
        verdicts = _llm_judge(server.url, concurrency=concurrency, seed=3).compare_many(prompts, firsts, seconds)
        shown_first_as_a = [
            (server.good_position[p] == "A") == (t == "first") for p, t in zip(prompts, truth, strict=True)
        ]
    assert [v.outcome for v in verdicts] == truth
    assert 0 < sum(shown_first_as_a) < len(prompts)  # both orders were used
    request = server.requests[0]
    assert request["path"] == "/v1/chat/completions"
    assert (request["model"], request["temperature"]) == ("judge-model", 0)
    assert request["authorization"] == f"Bearer {JUDGE_KEY}"
    assert "FIRST provide a one-sentence comparison" in request["messages"][0]["content"]


def test_the_order_is_seeded_and_the_same_one_at_a_time(monkeypatch):
    prompts, firsts, seconds, _ = _good_first_or_second(16)

    def orders(seed: int, many: bool) -> list[str]:
        with FakeChatServer() as server:
            judge = _llm_judge(server.url, seed=seed, concurrency=4)
            if many:
                judge.compare_many(prompts, firsts, seconds)
            else:
                for p, f, s in zip(prompts, firsts, seconds, strict=True):
                    judge.compare(p, f, s)
        return [server.good_position[p] for p in prompts]

    assert orders(0, many=True) == orders(0, many=False)
    assert orders(0, many=True) != orders(1, many=True)


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("garbage", "answer has no final A or B"),
        ("500", "HTTP 500"),
        ("notjson", "response is not JSON"),
        ("slow", "timeout after 0.2 s"),
    ],
)
def test_failures_are_verdicts_with_reasons(mode, reason, monkeypatch):
    monkeypatch.setenv(JUDGE_KEY_ENV, JUDGE_KEY)
    prompts, firsts, seconds, truth = _good_first_or_second(3)
    with FakeChatServer(modes=["answer", mode, "answer"]) as server:
        verdicts = _llm_judge(server.url, timeout_s=0.2, max_retries=0, concurrency=1).compare_many(
            prompts, firsts, seconds
        )
    assert verdicts == [Verdict(truth[0]), Verdict("failed", reason), Verdict(truth[2])]  # the others survive
    assert len(server.requests) == 3  # no retries


def test_an_unreachable_server_fails_every_comparison():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again before the judge connects
    judge = _llm_judge(f"http://127.0.0.1:{port}/v1", max_retries=1)
    assert judge.compare("q", "a", "b") == Verdict("failed", "request failed: ConnectError")


def test_retryable_failures_are_retried(monkeypatch):
    prompts, firsts, seconds, truth = _good_first_or_second(1)
    with FakeChatServer(modes=["500", "slow", "answer"]) as server:
        judge = _llm_judge(server.url, timeout_s=0.2, max_retries=2)
        assert judge.compare_many(prompts, firsts, seconds) == [Verdict(truth[0])]
    assert len(server.requests) == 3


def test_the_key_is_sent_but_never_shown(monkeypatch):
    monkeypatch.setenv(JUDGE_KEY_ENV, JUDGE_KEY)
    with FakeChatServer(default="500") as server:
        judge = _llm_judge(server.url, max_retries=0)
        verdict = judge.compare("q", "a GOOD", "b")
    assert server.requests[0]["authorization"] == f"Bearer {JUDGE_KEY}"
    assert verdict == Verdict("failed", "HTTP 500")
    assert JUDGE_KEY not in repr(judge) and JUDGE_KEY not in str(verdict)
    assert judge.redact(f"body: Bearer {JUDGE_KEY}") == "body: Bearer ***"


def test_an_unset_key_variable_sends_no_header(monkeypatch):
    monkeypatch.delenv(JUDGE_KEY_ENV, raising=False)
    with FakeChatServer() as server:
        assert _llm_judge(server.url).compare("q", "GOOD", "meh") == Verdict("first")
        assert _llm_judge(server.url, api_key_env=None).compare("q", "GOOD", "meh") == Verdict("first")
    assert [r["authorization"] for r in server.requests] == [None, None]


def test_a_key_pasted_as_the_variable_name_is_refused_without_echoing_it():
    with pytest.raises(ConfigError) as error:
        LLMJudge("http://localhost:1/v1", "m", api_key_env=JUDGE_KEY)
    assert str(error.value).startswith("judge.api_key_env: must name an environment variable")
    assert JUDGE_KEY not in str(error.value)


@pytest.mark.parametrize("template", ["Judge {prompt}: {response_a}", "{prompt} {response_a} {response_b} {extra}"])
def test_a_template_needs_exactly_its_three_fields(template):
    with pytest.raises(ConfigError, match=r"^judge.template: must use exactly the fields"):
        LLMJudge("http://localhost:1/v1", "m", template=template)


@pytest.mark.parametrize(
    ("answer", "letter"),
    [
        ("Comparison: A is more detailed.\nMore helpful: A", "A"),
        ('Comparison: B wins.\n\nMore helpful: "B"\n', "B"),
        ("Comparison: …\n**More helpful:** B", "B"),
        ("Comparison: …\nPreferred: Response A.", "A"),
        ("B", "B"),
        ("Comparison: A is better than B", None),
        ("More helpful: A or B", None),
        ("More helpful: neither", None),
        ("", None),
    ],
)
def test_the_final_answer_is_the_last_lines_a_or_b(answer, letter):
    assert parse_final_answer(answer) == letter
