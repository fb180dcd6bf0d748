"""Conversational rows: message-list shape and role-order checks, and rendering with the chat template.

A conversational triple has `prompt` = the messages before the answer (ending with a user turn) and
`chosen` / `rejected` = the answer messages (normally one assistant message). Rendering follows TRL: the
prompt is the chat template applied to the prompt messages with the generation prompt added; a response is
what the template adds after that for the whole conversation, minus a trailing EOS (the trainer appends
EOS to every response itself).

A special token's text in a message (`<|im_start|>`, the EOS text, …) is the message's text, not markup: rendering
marks where it lands (`Rendered.forged`), so that it is encoded as text while the template's own markup is encoded
as special tokens (`tokenize.py`).
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from transformers import PreTrainedTokenizerBase

from dpo_lightning.data.tokenize import Rendered
from dpo_lightning.errors import RowProblem

ROLES = ("system", "user", "assistant")
Messages = list[dict[str, str]]


def as_messages(value: Any, field: str) -> Messages:
    """`value` as a list of {"role", "content"} messages (other keys dropped); `RowProblem` if it is none."""
    if value is None:
        raise RowProblem(f"{field}: missing")
    if not isinstance(value, list):
        raise RowProblem(f"{field}: expected a list of messages, got {type(value).__name__}")
    if not value:
        raise RowProblem(f"{field}: empty message list")
    messages = []
    for index, message in enumerate(value):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise RowProblem(f"{field}: message {index} has no string 'content'")
        if message.get("role") not in ROLES:
            raise RowProblem(f"{field}: message {index} has role {message.get('role')!r}, expected one of {ROLES}")
        messages.append({"role": message["role"], "content": message["content"]})
    return messages


def role_order_problem(prompt: Messages, response: Messages, field: str) -> str:
    """'' if `prompt` + `response` alternate user/assistant (after an optional leading system message), the
    prompt ends with a user turn and the response with an assistant turn; else the problem, naming `field`."""
    turns = prompt[1:] if prompt[0]["role"] == "system" else prompt
    prompt_roles = [m["role"] for m in turns]
    if not prompt_roles or prompt_roles != ["user", "assistant"] * (len(prompt_roles) // 2) + ["user"] * (
        len(prompt_roles) % 2
    ):
        return f"prompt: roles {[m['role'] for m in prompt]} must alternate user/assistant, starting with user"
    if prompt_roles[-1] != "user":
        return f"prompt: must end with a user message, ends with {prompt_roles[-1]!r}"
    response_roles = [m["role"] for m in response]
    expected = (["assistant", "user"] * len(response))[: len(response)]
    if response_roles != expected or response_roles[-1] != "assistant":
        return f"{field}: roles {response_roles} must alternate assistant/user and end with assistant"
    return ""


def render(
    tokenizer: PreTrainedTokenizerBase, prompt: Messages, response: Messages, specials: re.Pattern, field: str
) -> tuple[Rendered, Rendered]:
    """(prompt with the generation prompt, response without a trailing EOS) under the tokenizer's chat template,
    the special-token texts (`specials`) of the messages' content marked forged (module docstring).

    They are rendered wrapped in markers unique to this call, which are then taken out again. Raises `RowProblem`
    if the template renders the prompt differently inside the whole conversation (then no prompt/response split
    exists), or alters a wrapped special-token text (naming the prompt, or the response as `field`).
    """
    start, end = markers = (f"[[forged:{uuid.uuid4().hex}:", ":forged]]")

    def marked(messages: Messages) -> Messages:
        return [{**m, "content": specials.sub(lambda s: start + s[0] + end, m["content"])} for m in messages]

    prompt_text = tokenizer.apply_chat_template(marked(prompt), tokenize=False, add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template(marked(prompt + response), tokenize=False)
    if not full_text.startswith(prompt_text):
        raise RowProblem("prompt: the chat template renders it differently inside the whole conversation")
    response_text = full_text[len(prompt_text) :]
    eos = tokenizer.eos_token
    if eos and response_text.rstrip().endswith(eos):  # the template's EOS: one from the message ends with a marker
        response_text = response_text.rstrip()[: -len(eos)]
    return _unmarked(prompt_text, markers, specials, "prompt"), _unmarked(response_text, markers, specials, field)


def _unmarked(text: str, markers: tuple[str, str], specials: re.Pattern, field: str) -> Rendered:
    """`text` without the markers around the special-token texts of messages, which become its forged spans."""
    start, end = markers
    pieces = re.split(f"{re.escape(start)}(.*?){re.escape(end)}", text, flags=re.DOTALL)  # text, special, …, text
    if any(start in piece or end in piece for piece in pieces[::2]) or not all(
        specials.fullmatch(piece) for piece in pieces[1::2]
    ):
        raise RowProblem(f"{field}: the chat template alters a special token's text in a message, which must stay text")
    forged, at = [], 0
    for index, piece in enumerate(pieces):
        if index % 2:
            forged.append((at, at + len(piece)))
        at += len(piece)
    return Rendered("".join(pieces), tuple(forged))
