"""DPOLitModule: what trains, what stays frozen, what goes into checkpoints."""

import pytest
import torch
from helpers import ADAMW, DPO, MODEL, PAD, fit, random_pairs

from dpo_lightning.data.collate import collate_padded, placeholder_batch
from dpo_lightning.models.logprobs import sequence_logprobs
from dpo_lightning.models.reference import ReferenceFree
from dpo_lightning.runtime.faults import DivergenceGuard
from dpo_lightning.training.module import REFERENCE_PREFIX, DPOLitModule


def _module(loss=DPO) -> DPOLitModule:
    module = DPOLitModule(model=MODEL, loss=loss, optimizer=ADAMW)
    module.configure_model()
    return module


def test_reference_starts_equal_to_policy_and_is_frozen():
    module = _module()
    policy, reference = module.policy.state_dict(), module.reference.model.state_dict()
    assert all(torch.equal(policy[k], reference[k]) for k in policy)
    assert not any(p.requires_grad for p in module.reference.parameters())
    module.train()
    assert not module.reference.training and not module.reference.model.training


def test_gradients_reach_only_the_policy():
    module = _module()
    batch = collate_padded(random_pairs(4), PAD)
    loss = module.training_step(batch, 0)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.policy.parameters())
    assert all(p.grad is None for p in module.reference.parameters())


def test_optimizer_holds_only_policy_parameters():
    module = _module()
    optimizer = module.configure_optimizers()["optimizer"]
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in module.policy.parameters()}
    assert not optimized & {id(p) for p in module.reference.parameters()}


def test_training_changes_policy_and_leaves_reference_bit_identical(tmp_path):
    module = _module()
    before = {k: v.clone() for k, v in module.reference.model.state_dict().items()}
    policy_before = {k: v.clone() for k, v in module.policy.state_dict().items()}
    fit(module, tmp_path)
    after = module.reference.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(not torch.equal(policy_before[k], v) for k, v in module.policy.state_dict().items())


def test_checkpoint_leaves_out_the_reference_and_loads_back(tmp_path):
    module = _module()
    trainer = fit(module, tmp_path, steps=2)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=True)["state_dict"]
    assert saved and not any(k.startswith(REFERENCE_PREFIX) for k in saved)
    assert any(k.startswith("policy.") for k in saved)

    restored = _module()
    restored.on_load_checkpoint({"state_dict": saved})
    restored.load_state_dict(saved, strict=True)
    for key, value in module.policy.state_dict().items():
        assert torch.equal(restored.policy.state_dict()[key], value)


def test_sft_builds_no_reference():
    module = _module({"_target_": "dpo_lightning.losses.sft.SFT"})
    assert module.reference is None
    loss = module.training_step(collate_padded(random_pairs(2), PAD), 0)
    assert torch.isfinite(loss) and loss > 0


def test_warmup_schedule_matches_reference_implementation():
    module = _module()
    schedule = module.configure_optimizers()["lr_scheduler"]["scheduler"]
    rates = []
    for _ in range(4):
        rates.append(schedule.get_last_lr()[0])
        schedule.optimizer.step()
        schedule.step()
    assert rates == [1e-2 * min(1.0, (step + 1) / 3) for step in range(4)]


def test_reference_none_builds_no_copy_and_uses_zero_reference_logps():
    module = DPOLitModule(model=MODEL, loss=DPO, optimizer=ADAMW, reference=ReferenceFree())
    module.configure_model()
    assert not list(module.reference.parameters())  # no copy of the policy
    batch = collate_padded(random_pairs(4), PAD)
    logps, _ = sequence_logprobs(module.policy, batch)
    expected = -torch.nn.functional.logsigmoid(0.1 * (logps[:4] - logps[4:]))  # π_ref ≡ 1: Δ = π_c − π_r
    torch.testing.assert_close(module.training_step(batch, 0), expected.mean())


def _fit_clipped(tmp_path, callbacks, gradient_clip_val=None, steps=3):
    """A module trained `steps` steps with a tiny clip (so every step clips); its policy's weights."""
    torch.manual_seed(0)
    module = _module()
    options = {"enable_checkpointing": False, "gradient_clip_val": gradient_clip_val, "callbacks": callbacks}
    fit(module, tmp_path, steps, **options)
    return {name: value.detach().clone() for name, value in module.policy.state_dict().items()}


def test_the_divergence_guard_clips_with_the_one_gradient_norm_it_computes(tmp_path, monkeypatch):
    """With clipping on, the total gradient norm is computed once per optimizer step, and the clipped weights are
    bit-identical to Lightning's own clipping (torch's clip_grad_norm_)."""
    expected = _fit_clipped(tmp_path, [], gradient_clip_val=0.05)
    calls = []
    get_total_norm = torch.nn.utils.get_total_norm
    monkeypatch.setattr(torch.nn.utils, "get_total_norm", lambda *a, **k: calls.append(1) or get_total_norm(*a, **k))
    clipped = _fit_clipped(tmp_path, [DivergenceGuard(max_norm=0.05)], steps=3)
    assert len(calls) == 3
    assert all(torch.equal(clipped[name], expected[name]) for name in expected)
    unclipped = _fit_clipped(tmp_path, [DivergenceGuard()])
    assert not all(torch.equal(unclipped[name], expected[name]) for name in expected)


@pytest.mark.parametrize(
    "loss",
    [
        {"_target_": "dpo_lightning.losses.bco_pair.BCOPair", "beta": 0.1},
        {
            "_target_": "dpo_lightning.losses.combo.Combo",
            "_convert_": "partial",
            "parts": [DPO, {"_target_": "dpo_lightning.losses.bco_pair.BCOPair", "beta": 0.1}],
            "weights": [1.0, 1.0],
        },
    ],
    ids=["bco_pair", "combo"],
)
def test_objective_state_sees_training_batches_only(loss):
    """BCO's running reward shift δ: a training batch updates it; a placeholder training batch (a rank out of
    streaming data) and a validation batch leave it as it was."""
    module = _module(loss)
    bco = module.objective.parts[1] if hasattr(module.objective, "parts") else module.objective
    with torch.no_grad():  # rewards away from 0, so that every batch moves δ
        for parameter in module.policy.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    batch = collate_padded(random_pairs(4), PAD)
    module.training_step(batch, 0)
    delta = bco._delta.clone()
    module.training_step(placeholder_batch(PAD), 1)
    assert torch.equal(bco._delta, delta) and bco._batches == 1
    with torch.no_grad():
        module.validation_step(collate_padded(random_pairs(4, seed=5), PAD), 0)
    assert torch.equal(bco._delta, delta) and bco._batches == 1
    module.training_step(collate_padded(random_pairs(4, seed=6), PAD), 2)
    assert bco._batches == 2 and not torch.equal(bco._delta, delta)
