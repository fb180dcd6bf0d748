"""No API key or token is ever printed or written: `redact` removes secrets from every config the project prints
or writes (`redacted_config`), `RedactHydraOutput` rewrites what Hydra itself saved of the job (`.hydra/*.yaml`, a
sweep's `multirun.yaml`), where a secret given on the command line would otherwise stay, `printed_config_redacted`
does the same for what Hydra prints with `--cfg`, and `redacted_argv` for the command line W&B records.
"""

from __future__ import annotations

import io
import os
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

REDACTED = "<redacted>"
# A string value this long or longer that is a secret is also removed wherever it appears inside other strings
# (e.g. `key=value` in Hydra's override lists); shorter ones would blank out innocent text.
MIN_SECRET_LENGTH = 8
# The last word of a key that holds a secret (`token`, `client_secret`, `Authorization`, `db_password`, …).
_SECRET_WORDS = frozenset(
    {"secret", "secrets", "password", "passwd", "passphrase", "authorization", "auth", "credential", "credentials"}
    | {"cookie", "cookies", "apikey", "bearer", "token"}
)
# `<word>_key` holds a secret (`api_key`, `WANDB_API_KEY`, `aws_secret_access_key`, …); other `*_key`s need not.
_SECRET_KEY_PREFIXES = frozenset({"api", "access", "private", "secret", "signing", "encryption", "license"})
# `<word>_token` names a tokenizer's special token (`pad_token: <|pad|>`), not a credential.
_SPECIAL_TOKENS = frozenset({"pad", "eos", "bos", "unk", "sep", "cls", "mask"})


def _words(key: str) -> list[str]:
    """`WANDB_API_KEY`, `wandbApiKey`, `x-api-key` → [wandb|x, api, key] (lower case)."""
    return [word.lower() for word in re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+", key)]


def is_secret_key(key: str) -> bool:
    """Whether a config key (or environment variable name) holds a secret, judged by its last word: `token`,
    `hf_token`, `api_key`, `Authorization`, `client_secret`, `password` do; `api_key_env` (the NAME of the
    variable holding a key), `pad_token`, `max_new_tokens`, `pad_token_id`, `num_key_value_heads` do not."""
    words = _words(key)
    if not words:
        return False
    *before, last = words
    if last == "key":
        return bool(before) and before[-1] in _SECRET_KEY_PREFIXES
    if last == "token":
        return not before or before[-1] not in _SPECIAL_TOKENS
    return last in _SECRET_WORDS


def _leaves(node: Any) -> Iterator[Any]:
    if isinstance(node, Mapping):
        node = list(node.values())
    if isinstance(node, list | tuple):
        for value in node:
            yield from _leaves(value)
    elif node is not None:
        yield node


def secret_values(node: Any) -> Iterator[str]:
    """The values (as text) held under secret-looking keys anywhere in a plain container."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            secret = isinstance(key, str) and is_secret_key(key)
            yield from (str(leaf) for leaf in _leaves(value)) if secret else secret_values(value)
    elif isinstance(node, list | tuple):
        for value in node:
            yield from secret_values(value)


def _environment_secrets() -> set[str]:
    """Values of secret-looking environment variables (WANDB_API_KEY, OPENAI_API_KEY, HF_TOKEN, …)."""
    return {value for name, value in os.environ.items() if is_secret_key(name)}


def redact(config: Any, secrets: Iterable[str] = ()) -> Any:
    """A copy of a plain config container (dicts, lists, scalars) with every secret replaced by "<redacted>".

    The value of each secret-looking key (`is_secret_key`; a null stays null: it tells that none is set) is
    replaced whole; inside every string, each occurrence of a secret of at least MIN_SECRET_LENGTH characters —
    one of those values, one of `secrets`, or the value of a secret-looking environment variable — is replaced.
    """
    known = {*secrets, *secret_values(config), *_environment_secrets()}
    texts = sorted((s for s in known if len(s) >= MIN_SECRET_LENGTH), key=len, reverse=True)

    def scrub(node: Any) -> Any:
        if isinstance(node, Mapping):
            return {
                key: REDACTED if isinstance(key, str) and is_secret_key(key) and value is not None else scrub(value)
                for key, value in node.items()
            }
        if isinstance(node, list | tuple):
            return [scrub(value) for value in node]
        if isinstance(node, str):
            for text in texts:
                node = node.replace(text, REDACTED)
        return node

    return scrub(config)


def redact_overrides(arguments: Iterable[str]) -> list[str]:
    """Command-line arguments with the value of each secret-looking `key=value` override (`+hub.token=…`)
    replaced by "<redacted>", and the values of secret-looking environment variables removed from all."""
    redacted = []
    for argument in arguments:
        key, equals, _ = argument.partition("=")
        redacted.append(f"{key}={REDACTED}" if equals and is_secret_key(key) else argument)
    return redact(redacted)


def redact_printed_config(text: str, arguments: Iterable[str] = ()) -> str:
    """Hydra's `--cfg` printout (YAML, maybe after a `# @package …` line) with every secret redacted: the values of
    secret-looking keys, and the secret values of `arguments` (the command line's `key=value` overrides) and of
    the environment wherever they appear. A printout that is not a mapping (`--package` naming one value) has
    the known secrets removed from its text."""
    given = {value for key, _, value in (a.partition("=") for a in arguments) if value and is_secret_key(key)}
    header = [line for line in text.splitlines(keepends=True) if line.startswith("#")]
    body = "".join(line for line in text.splitlines(keepends=True) if not line.startswith("#"))
    content = yaml.safe_load(body) if body.strip() else None
    if not isinstance(content, dict):
        return redact(text, given)
    return "".join(header) + OmegaConf.to_yaml(redact(content, given))


@contextmanager
def printed_config_redacted(arguments: list[str]) -> Iterator[None]:
    """Inside the block, what goes to stdout is held back and printed through `redact_printed_config` at its end
    (for Hydra's `--cfg`, which prints the composed config, and exits, before the task function runs)."""
    held = io.StringIO()
    try:
        with redirect_stdout(held):
            yield
    finally:
        sys.stdout.write(redact_printed_config(held.getvalue(), arguments))


@contextmanager
def redacted_argv() -> Iterator[None]:
    """`sys.argv` passed through `redact_overrides` inside the block, restored after it. W&B records the command
    line in its run metadata when the run starts (a logger's first use): start it inside this block."""
    original = sys.argv[:]
    sys.argv[1:] = redact_overrides(sys.argv[1:])
    try:
        yield
    finally:
        sys.argv[:] = original


def redacted_config(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain, resolved, redacted data: what the project prints, logs and writes of it."""
    return redact(OmegaConf.to_container(cfg, resolve=True))


class RedactHydraOutput(Callback):
    """Hydra callback: rewrite Hydra's record of the job (`.hydra/config.yaml`, `hydra.yaml`, `overrides.yaml`,
    and in a sweep `multirun.yaml`) through `redact`, so that a secret given on the command line (which Hydra
    copies into them verbatim) does not stay on disk. Hydra writes these files just before `on_job_start`."""

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        secrets = set(secret_values(OmegaConf.to_container(config, resolve=False)))
        files = []
        if config.hydra.output_subdir is not None:
            files += sorted((Path(config.hydra.runtime.output_dir) / config.hydra.output_subdir).glob("*.yaml"))
        if config.hydra.mode == RunMode.MULTIRUN:
            files.append(Path(config.hydra.sweep.dir) / "multirun.yaml")
        for path in files:
            if path.is_file():
                content = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
                redacted = redact(content, secrets)
                if redacted != content:
                    path.write_text(OmegaConf.to_yaml(redacted))
