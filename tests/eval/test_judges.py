"""ClassifierScorer, RewardModelJudge and LLMJudge (against a local fake OpenAI-compatible server)."""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, LlamaConfig, LlamaForSequenceClassification

from dpo_lightning.errors import ConfigError
from dpo_lightning.eval.classifier import ClassifierScorer
from dpo_lightning.eval.judges import LLMJudge, RewardModelJudge, Verdict, parse_final_answer
from dpo_lightning.models.tiny_tokenizer import load_tiny_tokenizer

LABELS = {0: "NEGATIVE", 1: "POSITIVE"}
TEXTS = ["a fine film", "dull, slow and far too long for what it has to say", "ok", "the best movie of the year!"]
SECRET = "sk-test-Q7xSECRETkey"  # a stand-in API key that must never be written anywhere
KEY_ENV = "DPO_LIGHTNING_TEST_JUDGE_KEY"


def save_tiny_classifier(path: Path, id2label: dict[int, str] | None = None, seed: int = 0) -> Path:
    """A tiny random Llama sequence classifier (num_labels = len(id2label)) and the tiny tokenizer, in `path`."""
    id2label = LABELS if id2label is None else id2label
    config = LlamaConfig(
        vocab_size=1024,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
        initializer_range=0.1,
        id2label=id2label,
        label2id={label: i for i, label in id2label.items()},
    )
    torch.manual_seed(seed)
    LlamaForSequenceClassification(config).save_pretrained(path)
    load_tiny_tokenizer().save_pretrained(path)
    return path


def reference_logits(path: Path, texts: list[str], max_length: int | None = None, keep: str = "start") -> torch.Tensor:
    """Each text's logits, one unpadded text at a time in float64 (no scorer code): [len(texts), num_labels]."""
    tokenizer = load_tiny_tokenizer()
    model = AutoModelForSequenceClassification.from_pretrained(path).eval().double()
    rows = []
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        if max_length is not None:
            ids = ids[:max_length] if keep == "start" else ids[-max_length:]
        with torch.no_grad():
            rows.append(model(input_ids=torch.tensor([ids])).logits[0])
    return torch.stack(rows)


def softmax_column(logits: torch.Tensor, column: int) -> list[float]:
    """exp(l_column) / Σ_j exp(l_j), written out."""
    return [math.exp(row[column]) / sum(math.exp(v) for v in row) for row in logits.tolist()]


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


def _between(text: str, start: str, end: str) -> str:
    return text.split(start, 1)[1].split(end, 1)[0]


class FakeChatServer:
    """`POST /v1/chat/completions` on 127.0.0.1. Each request takes the next of `modes` (then `default`):

    answer: "A" or "B", whichever response holds the word GOOD; garbage: no final A/B; 500: an error whose body
    echoes the Authorization header; notjson: HTML; slow: the answer after 1 s. Records every request.
    """

    def __init__(self, default: str = "answer", modes: list[str] | None = None) -> None:
        self.default, self.modes = default, list(modes or [])
        self.requests: list[dict] = []
        self.good_position: dict[str, str] = {}  # prompt → where GOOD was shown: A or B
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    fake.requests.append(
                        {"path": self.path, "authorization": self.headers.get("Authorization"), **body}
                    )
                    mode = fake.modes.pop(0) if fake.modes else fake.default
                content = body["messages"][0]["content"]
                if mode == "500":
                    return self._send(500, f"server error; you sent {self.headers.get('Authorization')}", "text/plain")
                if mode == "notjson":
                    return self._send(200, "<html>not json</html>", "text/html")
                if mode == "slow":
                    time.sleep(1.0)
                answer = "Both are fine, really."
                if mode != "garbage":
                    prompt = _between(content, "Query: ", "\n\nResponse A:")
                    a = _between(content, "Response A:\n", "\n\nResponse B:")
                    b = _between(content, "Response B:\n", "\n\nFIRST")
                    letter = "A" if "GOOD" in a else "B"
                    assert ("GOOD" in a) != ("GOOD" in b)
                    with fake.lock:
                        fake.good_position[prompt] = letter
                    answer = f"Comparison: Response {letter} is clearly better.\nMore helpful: {letter}"
                reply = {"choices": [{"message": {"role": "assistant", "content": answer}}]}
                self._send(200, json.dumps(reply), "application/json")

            def _send(self, status: int, text: str, content_type: str) -> None:
                data = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.handle_error = lambda *args: None  # a client that timed out closed its socket: fine
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> FakeChatServer:
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def _llm_judge(url: str, **options) -> LLMJudge:
    options = {"model": "judge-model", "api_key_env": KEY_ENV, "retry_backoff_s": 0.0, **options}
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
    monkeypatch.setenv(KEY_ENV, SECRET)
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
    assert request["authorization"] == f"Bearer {SECRET}"
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
    monkeypatch.setenv(KEY_ENV, SECRET)
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
    monkeypatch.setenv(KEY_ENV, SECRET)
    with FakeChatServer(default="500") as server:
        judge = _llm_judge(server.url, max_retries=0)
        verdict = judge.compare("q", "a GOOD", "b")
    assert server.requests[0]["authorization"] == f"Bearer {SECRET}"
    assert verdict == Verdict("failed", "HTTP 500")
    assert SECRET not in repr(judge) and SECRET not in str(verdict)
    assert judge.redact(f"body: Bearer {SECRET}") == "body: Bearer ***"


def test_an_unset_key_variable_sends_no_header(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with FakeChatServer() as server:
        assert _llm_judge(server.url).compare("q", "GOOD", "meh") == Verdict("first")
        assert _llm_judge(server.url, api_key_env=None).compare("q", "GOOD", "meh") == Verdict("first")
    assert [r["authorization"] for r in server.requests] == [None, None]


def test_a_key_pasted_as_the_variable_name_is_refused_without_echoing_it():
    with pytest.raises(ConfigError) as error:
        LLMJudge("http://localhost:1/v1", "m", api_key_env=SECRET)
    assert str(error.value).startswith("judge.api_key_env: must name an environment variable")
    assert SECRET not in str(error.value)


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
