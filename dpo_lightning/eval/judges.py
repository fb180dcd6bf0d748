"""Judges of pairwise comparisons: which of two responses to a prompt is better.

A `Judge` answers `compare(prompt, first, second)` with a `Verdict`: "first", "second", "tie", or "failed" with a
reason (a judge that cannot decide reports it instead of raising, so one bad comparison never loses the others).
`RewardModelJudge` compares a reward model's (or classifier's) scores of prompt + response; `LLMJudge` asks an
OpenAI-compatible chat endpoint with the DPO paper's GPT-4 win-rate prompt (Rafailov et al. 2023, Appendix C).
"""

from __future__ import annotations

import logging
import os
import random
import re
import string
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from dpo_lightning.errors import ConfigError
from dpo_lightning.eval.classifier import ClassifierScorer

log = logging.getLogger(__name__)

Outcome = Literal["first", "second", "tie", "failed"]


@dataclass(frozen=True)
class Verdict:
    """The result of one comparison: `outcome`, and for "failed" a short `reason` (e.g. "HTTP 500")."""

    outcome: Outcome
    reason: str | None = None


class Judge:
    """Base of every judge. Subclasses implement `compare`; `compare_many` may be overridden to batch."""

    name: str = "judge"  # the judge's kind, recorded in winrate.json

    def compare(self, prompt: str, first: str, second: str) -> Verdict:
        """Which of `first` and `second` answers `prompt` better."""
        raise NotImplementedError

    def compare_many(self, prompts: Sequence[str], firsts: Sequence[str], seconds: Sequence[str]) -> list[Verdict]:
        """One verdict per (prompt, first, second), in order."""
        if not len(prompts) == len(firsts) == len(seconds):
            raise ValueError(f"compare_many: {len(prompts)} prompts, {len(firsts)} firsts, {len(seconds)} seconds")
        return [self.compare(p, f, s) for p, f, s in zip(prompts, firsts, seconds, strict=True)]

    def redact(self, text: str) -> str:
        """`text` with any secret the judge holds replaced by `***` (nothing to hide here)."""
        return text


class RewardModelJudge(Judge):
    """The response whose `prompt + response` scores higher wins; equal scores tie.

    Takes `ClassifierScorer`'s arguments: a reward model (num_labels == 1, `positive_label=None`: raw logit) or a
    classifier (the probability of `positive_label`).
    """

    name = "reward_model"

    def __init__(
        self, name_or_path: str, positive_label: str | None = None, truncation_side: str = "left", **options: Any
    ) -> None:
        options.setdefault("config_key", "judge.positive_label")
        self.scorer = ClassifierScorer(
            name_or_path, positive_label=positive_label, truncation_side=truncation_side, **options
        )

    def compare(self, prompt: str, first: str, second: str) -> Verdict:
        return self.compare_many([prompt], [first], [second])[0]

    def compare_many(self, prompts: Sequence[str], firsts: Sequence[str], seconds: Sequence[str]) -> list[Verdict]:
        """Scores all 2·N texts in batches of the scorer's `batch_size`, then compares pairwise."""
        if not len(prompts) == len(firsts) == len(seconds):
            raise ValueError(f"compare_many: {len(prompts)} prompts, {len(firsts)} firsts, {len(seconds)} seconds")
        scores = self.scorer.scores([p + r for p, r in zip([*prompts, *prompts], [*firsts, *seconds], strict=True)])
        count = len(prompts)
        return [_by_score(a, b) for a, b in zip(scores[:count], scores[count:], strict=True)]


def _by_score(first: float, second: float) -> Verdict:
    if first > second:
        return Verdict("first")
    if second > first:
        return Verdict("second")
    return Verdict("tie")


# Modelled on the DPO paper's GPT-4 win-rate prompt for dialogue (Rafailov et al. 2023, Appendix C.2).
DEFAULT_TEMPLATE = """For the following query to a chatbot, which response is more helpful?

Query: {prompt}

Response A:
{response_a}

Response B:
{response_b}

FIRST provide a one-sentence comparison of the two responses and explain which you feel is more helpful. \
SECOND, on a new line, state only "A" or "B" to indicate which response is more helpful. \
Your response should use the format:
Comparison: <one-sentence comparison and explanation>
More helpful: <"A" or "B">"""
TEMPLATE_FIELDS = {"prompt", "response_a", "response_b"}

# The answer's last non-empty line: an optional "More helpful:"-style label, then only A or B (quotes, `*`, a
# "Response" word and a full stop allowed around it).
_FINAL_ANSWER = re.compile(
    r"""^(?:[^:\n]*:)?[\s"'*`(\[]*(?:response\s+|summary\s+)?([AB])[\s"'*`)\].]*$""", re.IGNORECASE
)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


def parse_final_answer(answer: str) -> Literal["A", "B"] | None:
    """The letter A or B that the answer's last non-empty line states, or None when that line is anything else."""
    lines = [line.strip() for line in answer.strip().splitlines() if line.strip()]
    if not lines:
        return None
    match = _FINAL_ANSWER.match(lines[-1])
    return match.group(1).upper() if match else None  # type: ignore[return-value]


def check_template(template: str, fields: set[str], key: str) -> None:
    """A ConfigError naming `key` unless `template` is a format string using exactly `fields`."""
    try:
        found = {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}
    except ValueError as error:
        raise ConfigError(key, f"not a format string: {error}") from error
    if found != fields:
        raise ConfigError(key, f"must use exactly the fields {sorted(fields)}, found {sorted(found)}")


class _Failed(Exception):
    """One comparison could not be judged; `reason` is short and never holds a secret or a response body."""

    def __init__(self, reason: str, retry: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry = retry


class ChatClient:
    """An LLM behind an OpenAI-compatible `{url}/chat/completions` endpoint, asked at temperature 0, for judges.

    Timeouts, connection errors and HTTP 408/409/429/5xx are retried up to `max_retries` times (waiting
    `retry_backoff_s`·2^attempt); then, like HTTP errors and non-JSON replies, `reply` gives a short reason
    instead of the text. The API key is read from the environment variable named `api_key_env` and sent as
    `Authorization: Bearer …` (a variable that is not set: no header, fine for local servers). It never appears in
    a reason, log or repr. `key`: where the client's settings sit in the config (`judge`, `algorithm.labeller`),
    named in errors. Arguments as `LLMJudge`'s.
    """

    def __init__(
        self,
        url: str,
        model: str,
        api_key_env: str | None = "OPENAI_API_KEY",
        timeout_s: float = 30,
        max_retries: int = 2,
        seed: int = 0,
        max_tokens: int | None = None,
        concurrency: int = 4,
        retry_backoff_s: float = 1.0,
        key: str = "judge",
    ) -> None:
        if api_key_env is not None and not _ENV_NAME.match(api_key_env):
            # Never echo the value: a key pasted here by mistake would end up in the terminal.
            raise ConfigError(
                f"{key}.api_key_env", "must name an environment variable (e.g. OPENAI_API_KEY), not hold a key"
            )
        if timeout_s <= 0:
            raise ConfigError(f"{key}.timeout_s", f"must be > 0, got {timeout_s}")
        if max_retries < 0:
            raise ConfigError(f"{key}.max_retries", f"must be ≥ 0, got {max_retries}")
        if concurrency < 1:
            raise ConfigError(f"{key}.concurrency", f"must be ≥ 1, got {concurrency}")
        self.url = url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.seed = seed
        self.max_tokens = max_tokens
        self.concurrency = concurrency
        self.retry_backoff_s = retry_backoff_s
        self._rng = random.Random(seed)
        self._api_key = os.environ.get(api_key_env) if api_key_env else None
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        if api_key_env and not self._api_key:
            log.info("%s.api_key_env: $%s is not set; sending no Authorization header", key, api_key_env)
        self._client = httpx.Client(headers=headers, timeout=timeout_s)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={self.url!r}, model={self.model!r}, api_key_env={self.api_key_env!r})"

    def redact(self, text: str) -> str:
        """`text` with the API key replaced by `***`."""
        return text.replace(self._api_key, "***") if self._api_key else text

    def reply(self, content: str) -> tuple[str, None] | tuple[None, str]:
        """(the model's reply to the one-message chat `content`, None), or (None, the short reason it failed)."""
        try:
            return self._ask(content), None
        except _Failed as failure:
            return None, self.redact(failure.reason)

    def _ask(self, content: str) -> str:
        """The model's reply text, retrying retryable failures; raises `_Failed`."""
        for attempt in range(self.max_retries + 1):
            try:
                return self._request(content)
            except _Failed as failure:
                if not failure.retry or attempt == self.max_retries:
                    raise
                time.sleep(self.retry_backoff_s * 2**attempt)
        raise AssertionError("unreachable")

    def _request(self, content: str) -> str:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": content}],
            "temperature": 0,
        }
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        try:
            response = self._client.post(f"{self.url}/chat/completions", json=body)
        except httpx.TimeoutException as error:
            raise _Failed(f"timeout after {self.timeout_s:g} s", retry=True) from error
        except httpx.HTTPError as error:  # connection refused, DNS, protocol errors
            raise _Failed(f"request failed: {type(error).__name__}", retry=True) from error
        if response.status_code != 200:
            raise _Failed(f"HTTP {response.status_code}", retry=response.status_code in _RETRY_STATUS)
        try:
            data = response.json()
        except ValueError as error:
            raise _Failed("response is not JSON") from error
        try:
            text = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as error:
            raise _Failed("response has no choices[0].message.content") from error
        if not isinstance(text, str):
            raise _Failed("response has no choices[0].message.content")
        return text

    def close(self) -> None:
        """Close the HTTP connections."""
        self._client.close()


class LLMJudge(ChatClient, Judge):
    """An LLM behind an OpenAI-compatible `{url}/chat/completions` endpoint, at temperature 0 (`ChatClient`).

    Each comparison shows the two responses as A and B in an order drawn from `random.Random(seed)` (position-bias
    control) and maps the model's final "A"/"B" back to first/second. Failed requests (after `ChatClient`'s
    retries), non-JSON replies and answers without a final A or B give a "failed" verdict with a short reason.

    Args:
        url: the API base, e.g. `https://api.openai.com/v1` or `http://localhost:8000/v1`.
        model: the model name sent with each request.
        api_key_env: name of the environment variable holding the key; None: never send one.
        timeout_s: per-request timeout in seconds.
        max_retries: extra attempts after a retryable failure.
        template: the judging prompt, with `{prompt}`, `{response_a}`, `{response_b}` (literal braces doubled);
            None: `DEFAULT_TEMPLATE`.
        seed: seeds the A/B order.
        max_tokens: the answer's token limit sent with each request; None: not sent (the server's default).
        concurrency: requests in flight at once in `compare_many`.
        retry_backoff_s: the wait before the first retry; doubled for each further one.
    """

    name = "llm"

    def __init__(self, url: str, model: str, template: str | None = DEFAULT_TEMPLATE, **client: Any) -> None:
        template = DEFAULT_TEMPLATE if template is None else template
        check_template(template, TEMPLATE_FIELDS, "judge.template")
        super().__init__(url, model, **client)
        self.template = template

    def compare(self, prompt: str, first: str, second: str) -> Verdict:
        return self._compare(prompt, first, second, swap=self._rng.random() < 0.5)

    def compare_many(self, prompts: Sequence[str], firsts: Sequence[str], seconds: Sequence[str]) -> list[Verdict]:
        """`concurrency` requests at a time; the A/B orders are drawn in input order first, so results are the
        same whatever the concurrency."""
        if not len(prompts) == len(firsts) == len(seconds):
            raise ValueError(f"compare_many: {len(prompts)} prompts, {len(firsts)} firsts, {len(seconds)} seconds")
        swaps = [self._rng.random() < 0.5 for _ in prompts]
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(self._compare, prompts, firsts, seconds, swaps))

    def _compare(self, prompt: str, first: str, second: str, swap: bool) -> Verdict:
        """Judge with `first` shown as A (or as B when `swap`), mapping the answer back."""
        response_a, response_b = (second, first) if swap else (first, second)
        answer, failure = self.reply(self.template.format(prompt=prompt, response_a=response_a, response_b=response_b))
        if answer is None:
            return Verdict("failed", failure)
        letter = parse_final_answer(answer)
        if letter is None:
            return Verdict("failed", "answer has no final A or B")
        return Verdict("first" if (letter == "A") != swap else "second")
