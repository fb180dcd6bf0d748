"""Every `conf/loss/*.yaml` option (found at collection time, so new ones are picked up): one SGD step moves the
policy's log-probs the way the loss says, a reference is built exactly when the loss needs one, and
`python train.py loss=<name>` trains end to end."""

import math
import time
from pathlib import Path

import pytest
import torch
import yaml
from helpers import ADAMW, MODEL, PAD, SMALL, compose, random_pairs, read_summary, run_in_process, train
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from dpo_lightning.cli import train as train_command
from dpo_lightning.conf import CONF_DIR
from dpo_lightning.data.collate import Batch, collate_padded
from dpo_lightning.errors import ConfigError
from dpo_lightning.losses import PairLogps, RankingLogps, TokenLogps
from dpo_lightning.models.loading import build_model
from dpo_lightning.models.logprobs import sum_per_sequence, token_logprobs
from dpo_lightning.runtime.checks import validate_config
from dpo_lightning.training.module import DPOLitModule

LOSSES = sorted(path.stem for path in (CONF_DIR / "loss").glob("*.yaml"))
# What one small descent step does to the batch's mean summed log-probs: "chosen" up, "rejected" down, and the
# "margin" chosen − rejected up. Every loss not listed does all three.
MOVES = {
    # maximum likelihood on the chosen response only: no term acts on the rejected one
    "sft": {"chosen"},
    "preferred_ft": {"chosen"},
    # σ(r_c) pulls the chosen likelihood down and 1 − σ(r_c − r_r) pulls it up; at policy = reference the two
    # cancel exactly (σ'(0) each), so the chosen log-prob has no first-order direction there; later the chosen
    # likelihood goes down by design ("chosen likelihood down, rejected further down")
    "apo_down": {"rejected", "margin"},
}
EVERYTHING = {"chosen", "rejected", "margin"}
# Losses started from a reference that prefers the rejected responses (every pair's β·Δ ≥ 0.1) instead of the
# policy itself: DiscoPOP (τ = 0.05) has a local maximum at β·Δ ≈ 0.07, so at Δ = 0 each pair's own gradient
# lowers its margin (documented in losses/discopop.py); everywhere outside that bump it raises it.
AWAY_FROM_REFERENCE = {"discopop"}
PAIRS = 8
SGD_LR = 1e-3  # small enough that the first-order effect of the step dominates
# Even smaller end-to-end runs than helpers.SMALL (later overrides win): 2 steps of 8 pairs, samples of 2 prompts
# (4 tokens) at each validation (full-length samples of 8 prompts took a third of the sweep's time).
TINY = [
    "task.source.num_train_pairs=16",
    "task.source.num_val_pairs=8",
    "data.eval_batch_size=8",
    "trainer.max_steps=2",
    "trainer.val_check_interval=2",
    "samples.num_prompts=2",
    "samples.max_new_tokens=4",
]


def _compose(*overrides: str) -> DictConfig:
    """The composed config (logger=none: the csv logger's folder is a Hydra runtime value, unset here)."""
    return compose("logger=none", *overrides)


def _module(name: str) -> DPOLitModule:
    cfg = _compose(f"loss={name}")
    plain = OmegaConf.to_container(cfg, resolve=True)
    module = DPOLitModule(model=MODEL, loss=plain["loss"], optimizer=ADAMW, reference=plain["reference"])
    module.configure_model()
    return module


def _sums(policy: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """[P], [P] summed log-probs of the chosen and rejected responses."""
    with torch.no_grad():
        sums, _ = sum_per_sequence(token_logprobs(policy, batch), batch)
    return sums[: batch.num_pairs], sums[batch.num_pairs :]


@pytest.fixture(scope="module")
def batch() -> Batch:
    return collate_padded(random_pairs(PAIRS, seed=0), PAD)


@pytest.fixture(scope="module")
def sft_state(batch) -> dict[str, torch.Tensor]:
    """The tiny policy after a few steps of maximum likelihood on both responses of every pair.

    The state preference losses start from (the DPO pipeline's SFT stage): both responses of a pair are likely
    (mean token probability ≈ 0.7) and compete for the same prompt. At random initialisation every token has
    p ≈ 1/97, where terms acting through p itself have almost no gradient (unlikelihood's −log(1 − p) ≈ p, ORPO's
    odds) and the chosen NLL term, raising chosen tokens through shared weights, also raises the rejected ones:
    orpo and unlikelihood then raise the rejected log-probs on some seeds, a property of that point, not of them.
    """
    model = build_model(MODEL).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(20):
        optimizer.zero_grad()
        (-token_logprobs(model, batch).mean()).backward()
        optimizer.step()
    with torch.no_grad():
        assert 0.4 < token_logprobs(model, batch).exp().mean() < 0.9  # likely, far from the p → 1 clamps
    return _state(model)


@pytest.fixture(scope="module")
def rejected_preferring_state(batch, sft_state) -> dict[str, torch.Tensor]:
    """`sft_state` after a few more steps of maximum likelihood on the rejected responses only."""
    model = build_model(MODEL).train()
    model.load_state_dict(sft_state)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(5):
        optimizer.zero_grad()
        (-token_logprobs(model, batch)[batch.target_seqs >= batch.num_pairs].mean()).backward()
        optimizer.step()
    return _state(model)


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


@pytest.mark.parametrize("name", LOSSES)
def test_one_sgd_step_raises_chosen_and_lowers_rejected_log_probs(name, batch, sft_state, rejected_preferring_state):
    module = _module(name)
    module.policy.load_state_dict(sft_state)
    if module.reference is not None:  # the reference is the starting policy, as in training
        module.reference.model.load_state_dict(sft_state)
    chosen_before, rejected_before = _sums(module.policy, batch)
    if name in AWAY_FROM_REFERENCE:
        module.reference.model.load_state_dict(rejected_preferring_state)
        reference_chosen, reference_rejected = _sums(module.reference.model, batch)
        margins = (chosen_before - reference_chosen) - (rejected_before - reference_rejected)  # [P] Δ
        assert (module.objective.beta * margins >= 0.1).all()
    module.training_step(batch, 0).backward()
    with torch.no_grad():
        for parameter in module.policy.parameters():
            parameter -= SGD_LR * parameter.grad
    chosen_after, rejected_after = _sums(module.policy, batch)
    chosen_change, rejected_change = (chosen_after - chosen_before).mean(), (rejected_after - rejected_before).mean()
    moves = MOVES.get(name, EVERYTHING)
    assert "chosen" not in moves or chosen_change > 0, f"chosen log-probs moved by {chosen_change:.3g}"
    assert "rejected" not in moves or rejected_change < 0, f"rejected log-probs moved by {rejected_change:.3g}"
    assert "margin" not in moves or chosen_change > rejected_change


@pytest.mark.parametrize("name", LOSSES)
def test_a_reference_is_built_exactly_when_the_loss_needs_one(name):
    module = _module(name)
    assert (module.reference is not None) == module.objective.needs_reference
    optimizer = module.configure_optimizers()["optimizer"]
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in module.policy.parameters()}


@pytest.mark.parametrize("name", LOSSES)
def test_reference_none_is_refused_in_one_line_exactly_where_the_loss_needs_a_reference(name):
    cfg = _compose(f"loss={name}", "reference=none")
    objective = instantiate(cfg.loss)
    if objective.needs_reference and not objective.reference_free_ok:
        with pytest.raises(ConfigError) as error:
            validate_config(cfg)
        assert str(error.value).startswith("reference: loss=") and "\n" not in str(error.value)
    else:
        validate_config(cfg)


def _defines_rewards(name: str) -> bool:
    """Whether loss=<name>'s LossOutput carries rewards (called on two made-up pairs)."""
    objective = instantiate(_compose(f"loss={name}").loss)
    logps = torch.tensor([-3.0, -5.0, -4.0, -2.0])
    seqs = torch.arange(4)
    lengths = torch.ones(2, dtype=torch.long)
    policy = PairLogps(logps[:2], logps[2:], lengths, lengths, TokenLogps(logps, seqs))
    reference = PairLogps(logps[:2] - 1, logps[2:] + 1, lengths, lengths)
    if objective.takes_rankings:  # the same two pairs as rankings of two: [chosen, rejected] each
        ranks, groups = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1])
        policy = RankingLogps.from_sequences(logps, torch.ones(4, dtype=torch.long), ranks, groups)
        reference = RankingLogps.from_sequences(
            logps + torch.tensor([-1, -1, 1, 1]), policy.num_tokens.flatten(), ranks, groups
        )
    output = objective(policy, reference if objective.needs_reference else None)
    return output.chosen_rewards is not None


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> dict[str, Path]:
    """One `python train.py -m loss=<every option>` (one process: much faster than one run per loss); each
    loss's job folder, by name."""
    sweep_dir = tmp_path_factory.mktemp("sweep")
    started = time.perf_counter()
    result = train("-m", f"loss={','.join(LOSSES)}", *SMALL, *TINY, f"hydra.sweep.dir={sweep_dir}", timeout=600)
    print(f"\n{len(LOSSES)} losses trained in one multirun in {time.perf_counter() - started:.1f} s")
    jobs = {}
    for overrides in sweep_dir.glob("*/.hydra/overrides.yaml"):
        (loss,) = [o.removeprefix("loss=") for o in yaml.safe_load(overrides.read_text()) if o.startswith("loss=")]
        jobs[loss] = overrides.parent.parent
    assert jobs, result.stderr[-3000:]
    return jobs


@pytest.mark.parametrize("name", LOSSES)
def test_every_loss_trains_end_to_end(name, sweep):
    assert name in sweep, f"no job folder for loss={name}"
    summary = read_summary(sweep[name])
    assert summary["status"] == "completed", summary["error"]
    metrics = summary["metrics"]
    assert summary["global_step"] == 2 and math.isfinite(metrics["val/loss"])
    assert ("val/rewards/accuracies" in metrics) == _defines_rewards(name)


def test_combo_with_a_reference_needing_part_refuses_reference_none_in_one_line(tmp_path):
    result = run_in_process(train_command.main, "loss=combo", "reference=none", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1].startswith("error: reference: loss=combo needs a reference model")
    assert "Traceback" not in result.stderr
