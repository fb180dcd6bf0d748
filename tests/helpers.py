"""What the tests share: tiny models and token data, the composed config, the module's test settings, `train.py`
as a subprocess and the commands in-process, tiny classifiers and a fake chat server for the judges, and W&B's
offline run record. Test modules import from here (`from helpers import …`), never from each other; fixtures live
in conftest.py."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict, read_write
from torch.utils.data import DataLoader
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    LlamaConfig,
    LlamaForSequenceClassification,
)

from dpo_lightning.conf import CONF_DIR
from dpo_lightning.data.collate import collate_padded
from dpo_lightning.data.rankings import ranks_from_scores
from dpo_lightning.data.tokenize import TokenizedPair, TokenizedRanking
from dpo_lightning.models.tiny_tokenizer import load_tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]
"""The checkout: where `train.py`, `scripts/` and `tests/fixtures/` are."""
FIXTURES = ROOT / "tests" / "fixtures"

# --- tiny random models and token data ----------------------------------------------------------------------------

VOCAB = 97
EOS = 1
PAD = 2

ARCHITECTURES = {
    "llama": dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    ),
    "gpt2": dict(n_embd=32, n_layer=2, n_head=4, n_positions=128),
    "gptj": dict(n_embd=32, n_layer=2, n_head=4, rotary_dim=8, n_positions=128),
    "gpt_neox": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4),
}
"""The smallest config of each architecture the paper (and its successors) trained."""


def tiny_causal_lm(architecture: str = "llama", seed: int = 0, dtype: torch.dtype = torch.float32):
    """A random-init causal LM of `architecture` (ARCHITECTURES) over VOCAB tokens, in eval mode."""
    config = AutoConfig.for_model(
        architecture,
        vocab_size=VOCAB,
        bos_token_id=0,
        eos_token_id=EOS,
        pad_token_id=PAD,
        **ARCHITECTURES[architecture],
    )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=dtype).eval()


def _random_tokens(rng: random.Random, low: int, high: int) -> list[int]:
    return [rng.randrange(3, VOCAB) for _ in range(rng.randint(low, high))]


def random_pairs(count: int, seed: int = 0) -> list[TokenizedPair]:
    """Pairs of varied lengths over token ids 3..VOCAB-1, responses ending with EOS."""
    rng = random.Random(seed)
    return [
        TokenizedPair(_random_tokens(rng, 1, 12), [*_random_tokens(rng, 0, 9), EOS], [*_random_tokens(rng, 0, 9), EOS])
        for _ in range(count)
    ]


def random_rankings(count: int, seed: int = 0, max_k: int = 5) -> list[TokenizedRanking]:
    """Rankings of 2..max_k responses of varied lengths, ending with EOS, with random scores (some tied)."""
    rng = random.Random(seed)
    rankings = []
    for _ in range(count):
        k = rng.randint(2, max_k)
        responses = [[*_random_tokens(rng, 0, 8), EOS] for _ in range(k)]
        scores = [rng.choice([0, 1, 2, 3]) for _ in range(k - 1)] + [4]
        rankings.append(TokenizedRanking(_random_tokens(rng, 1, 10), responses, ranks_from_scores(scores)))
    return rankings


# --- the composed config ------------------------------------------------------------------------------------------


def compose(
    *overrides: str, config: str = "config", run_dir: Path | None = None, with_hydra: bool = False
) -> DictConfig:
    """`conf/<config>.yaml` composed with `overrides`, as the command composes it.

    run_dir: as the task function of a run in `run_dir` receives it — `${hydra:…}` values (the csv logger's
    `save_dir`) resolve to `run_dir`, and the `hydra` node is gone. Without it, such values cannot be resolved.
    with_hydra: keep Hydra's own config (`cfg.hydra`: sweeper, launcher, …).
    """
    overrides = [*overrides, *([f"hydra.run.dir={run_dir}"] if run_dir is not None else [])]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose(config, overrides=overrides, return_hydra_config=with_hydra or run_dir is not None)
    if run_dir is None:
        return cfg
    with open_dict(cfg), read_write(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
    HydraConfig.instance().set_config(cfg)  # resolves ${hydra:…} as in a real run
    if not with_hydra:
        with open_dict(cfg):
            del cfg.hydra  # as the task function receives it
    return cfg


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> Path:
    """`rows` as JSON lines in `path`; the path."""
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


# --- DPOLitModule in tests ----------------------------------------------------------------------------------------

MODEL = {
    "name": "test",
    "name_or_path": None,
    "architecture": "llama",
    "config": {
        "vocab_size": VOCAB,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "eos_token_id": EOS,
        "pad_token_id": PAD,
    },
    "init_seed": 0,
    "dtype": "float32",
    "attn_implementation": "sdpa",
    "disable_dropout": True,
    "trust_remote_code": False,
}
"""A `model/` config of a tiny random Llama over VOCAB tokens (what `random_pairs` draws)."""
DPO = {"_target_": "dpo_lightning.losses.dpo.DPO", "beta": 0.1}
"""The `loss/` config of DPO, β = 0.1."""
ADAMW = {"_target_": "torch.optim.AdamW", "lr": 1e-2, "warmup_steps": 2}
"""An `optimizer/` config: AdamW at a high rate (a few steps change the tiny model), 2 warmup steps."""


def fit(module: L.LightningModule, tmp_path: Path, steps: int = 4, **trainer_options) -> L.Trainer:
    """`module` trained `steps` steps on the CPU on batches of 4 of 16 `random_pairs` (no logger, no validation);
    the trainer."""
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        limit_val_batches=0,
        **trainer_options,
    )
    loader = DataLoader(random_pairs(16), batch_size=4, collate_fn=lambda pairs: collate_padded(pairs, PAD))
    trainer.fit(module, train_dataloaders=loader)
    return trainer


# --- the commands -------------------------------------------------------------------------------------------------

SMALL = [
    "task.source.num_train_pairs=64",
    "task.source.num_val_pairs=16",
    "data.batch_size=8",
    "data.eval_batch_size=16",
    "trainer.max_steps=6",
    "trainer.val_check_interval=4",
    "trainer.enable_progress_bar=false",
]
"""A small, fast configuration of the default offline run: 6 steps of 8 pairs, validation on 16."""
DEMO = ["task.source.num_train_pairs=32", "task.source.num_val_pairs=8", "data.eval_batch_size=16"]
"""The sentiment demo, small: 32 training and 8 validation pairs."""


def offline_env(**changes: str) -> dict[str, str]:
    """This process's environment for a command: the hub offline, W&B offline without a key, and under pytest-xdist
    one thread per process (the workers share the machine's cores); `changes` on top."""
    threads = {"OMP_NUM_THREADS": "1"} if os.environ.get("PYTEST_XDIST_WORKER") else {}
    return {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "WANDB_API_KEY": "", **threads, **changes}


def train(
    *overrides: str,
    run_dir: Path | None = None,
    timeout: int = 300,
    env: dict[str, str] | None = None,
    cwd: Path = ROOT,
) -> subprocess.CompletedProcess:
    """`python train.py <overrides> [hydra.run.dir=<run_dir>]`, started in `cwd` (the checkout), offline (`env`:
    the environment instead of `offline_env()`), exactly as a user runs it; nothing to read on stdin (a prompt
    would end, not hang)."""
    command = [sys.executable, str(ROOT / "train.py"), *overrides]
    if run_dir is not None:
        command.append(f"hydra.run.dir={run_dir}")
    env = offline_env() if env is None else env
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def read_summary(run_dir: Path) -> dict:
    """The run's `summary.json`."""
    return json.loads((run_dir / "summary.json").read_text())


@contextlib.contextmanager
def _logging_restored() -> Iterator[None]:
    """Leave logging as it was: Hydra configures the root logger for its run (console and `train.log`), the train
    command hands Lightning's loggers to it."""
    manager = logging.Logger.manager
    loggers = [logging.getLogger(), *(lg for lg in manager.loggerDict.values() if isinstance(lg, logging.Logger))]
    saved = {lg: (lg.handlers[:], lg.level, lg.propagate, lg.disabled) for lg in loggers}
    try:
        yield
    finally:
        for lg, (handlers, level, propagate, disabled) in saved.items():
            for handler in lg.handlers:
                if handler not in handlers:
                    handler.close()
            lg.handlers[:] = handlers
            lg.level, lg.propagate, lg.disabled = level, propagate, disabled


def run_in_process(main: Callable[[], None], *arguments: str, program: str = "train.py") -> subprocess.CompletedProcess:
    """A command's console entry point (`dpo_lightning.cli.train.main`, `…pairs.main`, …) called in this process
    with `program` and `arguments` as its command line: its exit status, stdout and stderr, as a subprocess would
    give them. For checks of what a command does with its command line, where starting an interpreter of its own
    (importing torch, Lightning and transformers again, seconds each time) is not the point."""
    argv = [program, *arguments]
    stdout, stderr = io.StringIO(), io.StringIO()
    status = 0
    GlobalHydra.instance().clear()
    saved_argv = sys.argv
    sys.argv = argv
    try:
        with _logging_restored(), contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            main()
    except SystemExit as exit_:
        status = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        sys.argv = saved_argv
        GlobalHydra.instance().clear()
    return subprocess.CompletedProcess(argv, status, stdout.getvalue(), stderr.getvalue())


# --- classifiers and judges ---------------------------------------------------------------------------------------

LABELS = {0: "NEGATIVE", 1: "POSITIVE"}
"""The labels of a sentiment classifier."""
JUDGE_KEY = "sk-test-Q7xSECRETkey"
"""A stand-in API key for the LLM judge that must never be written anywhere."""
JUDGE_KEY_ENV = "DPO_LIGHTNING_TEST_JUDGE_KEY"
"""The environment variable the LLM judge reads its key from in tests (`judge.api_key_env`)."""


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


def _between(text: str, start: str, end: str) -> str:
    return text.split(start, 1)[1].split(end, 1)[0]


class FakeChatServer:
    """`POST /v1/chat/completions` on 127.0.0.1. Each request takes the next of `modes` (then `default`):

    answer: "A" or "B", whichever response holds the word GOOD (a listwise request: a ranking, GOOD responses
    first); garbage: no final A/B or ranking; 500: an error whose body echoes the Authorization header; notjson:
    HTML; slow: the answer after 1 s. Records every request.
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
                if mode != "garbage" and "\nRanking: " in content:  # a listwise request: GOOD responses first
                    shown = content.split("\n\nResponse ")[1:]
                    numbers = [int(block.split(":", 1)[0]) for block in shown]
                    order = sorted(numbers, key=lambda n: "GOOD" not in shown[n - 1])
                    answer = "Comparison: GOOD ones first.\nRanking: " + " > ".join(map(str, order))
                elif mode != "garbage":
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


# --- W&B ------------------------------------------------------------------------------------------------------------


def wandb_run_record(wandb_dir: Path):
    """The run record (entity, project, group, name, …: a `wandb_internal_pb2.RunRecord`) of the one offline W&B
    run under `wandb_dir`, read from its `.wandb` file: W&B's record log (LevelDB's log format: 32 KiB blocks of
    records with a 7-byte header — CRC, length, type full/first/middle/last — after a 7-byte file header), each
    record a protobuf `Record`."""
    from wandb.proto import wandb_internal_pb2

    (path,) = wandb_dir.glob("offline-run-*/*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, position, pieces = 32768, 7, b""
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        length, kind = int.from_bytes(data[position + 4 : position + 6], "little"), data[position + 6]
        pieces += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # full, last
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            pieces = b""
            if record.WhichOneof("record_type") == "run":
                return record.run
    raise AssertionError(f"{path}: no run record")
