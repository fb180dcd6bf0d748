"""The DPO family (cdpo, robust, ipo, hinge, exo_pair, nca_pair, bco_pair, sppo_hard, apo_zero, apo_down, aot,
discopop, rpo): each paper's formula computed by hand, limiting cases, gradient directions, dtypes, hyperparameter
checks and the conf options."""

import math

import pytest
import torch
from helpers import compose
from hydra.utils import instantiate

from dpo_lightning.errors import ConfigError
from dpo_lightning.losses import PairLogps
from dpo_lightning.losses.aot import AOT
from dpo_lightning.losses.apo import APODown, APOZero
from dpo_lightning.losses.bco_pair import BCOPair
from dpo_lightning.losses.cdpo import CDPO, cdpo_loss
from dpo_lightning.losses.discopop import DiscoPOP, discopop_loss
from dpo_lightning.losses.dpo import dpo_loss
from dpo_lightning.losses.exo_pair import EXOPair
from dpo_lightning.losses.hinge import Hinge
from dpo_lightning.losses.ipo import IPO, ipo_loss
from dpo_lightning.losses.nca_pair import NCAPair
from dpo_lightning.losses.robust import Robust
from dpo_lightning.losses.rpo import RPO
from dpo_lightning.losses.sppo_hard import SPPOHard, sppo_hard_loss

PAIRS = 8
BETA = 0.1
TOL = {"rtol": 1e-5, "atol": 1e-5}  # the objectives compute in fp32 from float64 inputs


def _pairs(seed: int, dtype=torch.float64, requires_grad: bool = False) -> PairLogps:
    """Random summed log-probs of P pairs (≤ 0, a few nats per token) with response lengths 1..20."""
    generator = torch.Generator().manual_seed(seed)
    chosen_tokens, rejected_tokens = (torch.randint(1, 21, (PAIRS,), generator=generator) for _ in range(2))
    chosen = -torch.rand(PAIRS, generator=generator, dtype=torch.float64) * 2 * chosen_tokens
    rejected = -torch.rand(PAIRS, generator=generator, dtype=torch.float64) * 2 * rejected_tokens
    chosen, rejected = chosen.to(dtype).requires_grad_(requires_grad), rejected.to(dtype).requires_grad_(requires_grad)
    return PairLogps(chosen, rejected, chosen_tokens, rejected_tokens)


def _batch(seed: int) -> tuple[PairLogps, PairLogps]:
    """(policy, reference) log-probs of the same P pairs: random values, the same response lengths."""
    policy, other = _pairs(seed), _pairs(seed + 1000)
    return policy, PairLogps(other.chosen, other.rejected, policy.chosen_tokens, policy.rejected_tokens)


def _neg_log_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """−log σ(x) = log(1 + e^{−x}), written out (inputs here stay far from overflow)."""
    return torch.log1p(torch.exp(-x))


def _sigmoid(x: torch.Tensor) -> torch.Tensor:
    return 1 / (1 + torch.exp(-x))


def _ratios(policy: PairLogps, reference: PairLogps) -> tuple[torch.Tensor, torch.Tensor]:
    """(π_c − ref_c, π_r − ref_r) in float64."""
    return (policy.chosen - reference.chosen).double(), (policy.rejected - reference.rejected).double()


# --- Hand computations, one per paper formula -----------------------------------------------------------------


def _hand_cdpo(policy, reference, beta, eps):
    a, b = _ratios(policy, reference)
    z = beta * (a - b)
    return (1 - eps) * _neg_log_sigmoid(z) + eps * _neg_log_sigmoid(-z)  # cross-entropy vs target (1−ε, ε)


def _hand_robust(policy, reference, beta, eps):
    a, b = _ratios(policy, reference)
    z = beta * (a - b)
    return ((1 - eps) * _neg_log_sigmoid(z) - eps * _neg_log_sigmoid(-z)) / (1 - 2 * eps)


def _hand_ipo(policy, reference, beta, length_normalized):
    pc, pr, rc, rr = (t.double() for t in (policy.chosen, policy.rejected, reference.chosen, reference.rejected))
    if length_normalized:
        lc, lr = policy.chosen_tokens.double(), policy.rejected_tokens.double()
        pc, pr, rc, rr = pc / lc, pr / lr, rc / lc, rr / lr
    h = torch.log(torch.exp(pc) * torch.exp(rr) / (torch.exp(pr) * torch.exp(rc)))  # the paper's h(y_w, y_l)
    return (h - 1 / (2 * beta)) ** 2


def _hand_hinge(policy, reference, beta):
    a, b = _ratios(policy, reference)
    return torch.clamp(1 - beta * (a - b), min=0)


def _hand_exo(policy, reference, beta, eps):
    a, b = _ratios(policy, reference)
    p = _sigmoid(beta * (a - b))  # model's probability that the chosen response wins
    return p * torch.log(p / (1 - eps)) + (1 - p) * torch.log((1 - p) / eps)  # KL(p_θ ‖ p_data)


def _hand_nca(policy, reference, beta):
    a, b = _ratios(policy, reference)
    r_c, r_r = beta * a, beta * b
    return _neg_log_sigmoid(r_c) + 0.5 * _neg_log_sigmoid(-r_c) + 0.5 * _neg_log_sigmoid(-r_r)


def _hand_bco_first_batch(policy, reference, beta):
    a, b = _ratios(policy, reference)
    r_c, r_r = beta * a, beta * b
    delta = (r_c.sum() + r_r.sum()) / (2 * PAIRS)  # first training batch: δ is that batch's mean reward
    return _neg_log_sigmoid(r_c - delta) + _neg_log_sigmoid(delta - r_r)


def _hand_sppo(policy, reference, beta):
    a, b = _ratios(policy, reference)
    eta = 1 / beta  # hard labels: P(winner) = 1, P(loser) = 0, centred at ½ and scaled by η
    return (a - eta * (1 - 0.5)) ** 2 + (b - eta * (0 - 0.5)) ** 2


def _hand_apo_zero(policy, reference, beta):
    a, b = _ratios(policy, reference)
    return (1 - _sigmoid(beta * a)) + _sigmoid(beta * b)


def _hand_apo_down(policy, reference, beta):
    a, b = _ratios(policy, reference)
    return _sigmoid(beta * a) + (1 - _sigmoid(beta * (a - b)))


def _hand_aot(policy, reference, beta, eps, paired):
    pc, pr, rc, rr = (
        t.double().tolist() for t in (policy.chosen, policy.rejected, reference.chosen, reference.rejected)
    )
    if paired:
        better = sorted(c - r for c, r in zip(pc, pr, strict=True))
        worse = sorted(c - r for c, r in zip(rc, rr, strict=True))
    else:
        better = sorted(p - r for p, r in zip(pc, rc, strict=True))
        worse = sorted(p - r for p, r in zip(pr, rr, strict=True))
    losses = []
    for x, y in zip(better, worse, strict=True):
        z = beta * (x - y)
        losses.append((1 - eps) * math.log1p(math.exp(-z)) + eps * math.log1p(math.exp(z)))
    return torch.tensor(losses, dtype=torch.float64)


def _hand_discopop(policy, reference, beta, tau):
    a, b = _ratios(policy, reference)
    z = beta * (a - b)
    weight = _sigmoid(z / tau)
    return (1 - weight) * _neg_log_sigmoid(z) + weight * torch.exp(-z)


def _hand_rpo(policy, reference, beta, alpha):
    a, b = _ratios(policy, reference)
    nll = -policy.chosen.double() / policy.chosen_tokens.double()
    return _neg_log_sigmoid(beta * (a - b)) + alpha * nll


CASES = {
    "cdpo": (lambda beta: CDPO(beta, label_smoothing=0.2), lambda p, r, beta: _hand_cdpo(p, r, beta, 0.2)),
    "robust": (lambda beta: Robust(beta, label_smoothing=0.3), lambda p, r, beta: _hand_robust(p, r, beta, 0.3)),
    "ipo": (lambda beta: IPO(beta), lambda p, r, beta: _hand_ipo(p, r, beta, False)),
    "ipo_per_token": (lambda beta: IPO(beta, length_normalized=True), lambda p, r, beta: _hand_ipo(p, r, beta, True)),
    "hinge": (Hinge, _hand_hinge),
    "exo_pair": (lambda beta: EXOPair(beta, label_smoothing=0.01), lambda p, r, beta: _hand_exo(p, r, beta, 0.01)),
    "exo_pair_default": (EXOPair, lambda p, r, beta: _hand_exo(p, r, beta, 1e-3)),
    "nca_pair": (NCAPair, _hand_nca),
    "bco_pair": (BCOPair, _hand_bco_first_batch),
    "sppo_hard": (SPPOHard, _hand_sppo),
    "apo_zero": (APOZero, _hand_apo_zero),
    "apo_down": (APODown, _hand_apo_down),
    "aot_paired": (
        lambda beta: AOT(beta, label_smoothing=0.1),
        lambda p, r, beta: _hand_aot(p, r, beta, 0.1, paired=True),
    ),
    "aot_unpaired": (lambda beta: AOT(beta, paired=False), lambda p, r, beta: _hand_aot(p, r, beta, 0.0, False)),
    "discopop": (DiscoPOP, lambda p, r, beta: _hand_discopop(p, r, beta, 0.05)),
    "discopop_tau": (lambda beta: DiscoPOP(beta, tau=0.5), lambda p, r, beta: _hand_discopop(p, r, beta, 0.5)),
    "rpo": (RPO, lambda p, r, beta: _hand_rpo(p, r, beta, 1.0)),
    "rpo_alpha": (lambda beta: RPO(beta, alpha=0.3), lambda p, r, beta: _hand_rpo(p, r, beta, 0.3)),
}


@pytest.mark.parametrize("beta", [0.05, 0.1, 0.5])
@pytest.mark.parametrize("case", sorted(CASES))
def test_loss_matches_the_paper_formula(case, beta):
    make, hand = CASES[case]
    policy, reference = _batch(0)
    objective = make(beta)
    objective.observe(policy, reference)  # a training batch, as the module feeds it (BCO: the first δ)
    output = objective(policy, reference)
    torch.testing.assert_close(output.losses.double(), hand(policy, reference, beta), **TOL)
    # the implicit DPO rewards β·(π − ref), per-token means for IPO's TRL variant
    scale = (policy.chosen_tokens.double(), policy.rejected_tokens.double()) if case == "ipo_per_token" else (1, 1)
    a, b = _ratios(policy, reference)
    torch.testing.assert_close(output.chosen_rewards.double(), beta * a / scale[0], **TOL)
    torch.testing.assert_close(output.rejected_rewards.double(), beta * b / scale[1], **TOL)


# --- Limiting cases -------------------------------------------------------------------------------------------


def _dpo(policy: PairLogps, reference: PairLogps, beta: float) -> torch.Tensor:
    return dpo_loss(policy.chosen, policy.rejected, reference.chosen, reference.rejected, beta)[0]


@pytest.mark.parametrize("objective", [CDPO(0.2, label_smoothing=0.0), Robust(0.2, label_smoothing=0.0)])
def test_no_label_noise_is_dpo(objective):
    policy, reference = _batch(2)
    torch.testing.assert_close(objective(policy, reference).losses, _dpo(policy, reference, 0.2))


def test_rpo_without_nll_is_dpo_exactly():
    policy, reference = _batch(4)
    output = RPO(0.3, alpha=0.0)(policy, reference)
    assert torch.equal(output.losses, _dpo(policy, reference, 0.3))
    torch.testing.assert_close(output.metrics["dpo_loss"], output.losses.mean())


def test_rpo_logs_its_two_terms():
    policy, reference = _batch(4)
    output = RPO(0.3, alpha=0.5)(policy, reference)
    nll = -policy.chosen / policy.chosen_tokens
    torch.testing.assert_close(output.metrics["nll_loss"].double(), nll.mean(), **TOL)
    torch.testing.assert_close(output.losses.mean(), output.metrics["dpo_loss"] + 0.5 * output.metrics["nll_loss"])


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_ipo_is_minimal_at_the_target_margin(beta):
    target = 1 / (2 * beta)
    margin = torch.tensor([target], dtype=torch.float64, requires_grad=True)
    loss = ipo_loss(margin, beta)
    loss.sum().backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    assert margin.grad.item() == pytest.approx(0.0, abs=1e-5)
    for step in (-0.1, 0.1):
        assert ipo_loss(torch.tensor([target + step]), beta).item() > loss.item()


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_sppo_hard_is_minimal_at_plus_minus_half_over_beta(beta):
    target = 1 / (2 * beta)
    chosen = torch.tensor([target], dtype=torch.float64, requires_grad=True)
    rejected = torch.tensor([-target], dtype=torch.float64, requires_grad=True)
    losses, _, _ = sppo_hard_loss(chosen, rejected, beta)
    losses.sum().backward()
    assert losses.item() == pytest.approx(0.0, abs=1e-6)
    assert chosen.grad.item() == pytest.approx(0.0, abs=1e-5) and rejected.grad.item() == pytest.approx(0.0, abs=1e-5)
    for dc, dr in ((0.1, 0.0), (-0.1, 0.0), (0.0, 0.1), (0.0, -0.1)):
        moved, _, _ = sppo_hard_loss(torch.tensor([target + dc]), torch.tensor([-target + dr]), beta)
        assert moved.item() > losses.item()


@pytest.mark.parametrize("eps", [1e-3, 0.1])
def test_exo_pair_vanishes_where_the_model_matches_the_smoothed_labels(eps):
    beta = 0.5
    margin = math.log((1 - eps) / eps) / beta  # σ(β·Δ) = 1 − ε
    policy = PairLogps(torch.tensor([margin]), torch.tensor([0.0]), torch.ones(1), torch.ones(1))
    zeros = PairLogps(torch.zeros(1), torch.zeros(1), torch.ones(1), torch.ones(1))
    assert EXOPair(beta, label_smoothing=eps)(policy, zeros).losses.item() == pytest.approx(0.0, abs=1e-5)


def test_cdpo_is_bounded_and_robust_is_not():
    margins = torch.tensor([1e3])
    assert cdpo_loss(margins, 1.0, 0.1).item() == pytest.approx(0.1 * 1e3, rel=1e-4)  # −ε·log σ(−z) ≈ ε·z grows
    minimum = cdpo_loss(torch.tensor([math.log(0.9 / 0.1)]), 1.0, 0.1).item()  # minimum at z = log((1−ε)/ε)
    assert minimum < cdpo_loss(torch.tensor([0.0, 5.0]), 1.0, 0.1).min().item()
    robust = Robust(1.0, label_smoothing=0.1)
    big = PairLogps(margins, torch.zeros(1), torch.ones(1), torch.ones(1))
    zeros = PairLogps(torch.zeros(1), torch.zeros(1), torch.ones(1), torch.ones(1))
    assert robust(big, zeros).losses.item() == pytest.approx(-0.1 * 1e3 / 0.8, rel=1e-4)


def test_aot_paired_ignores_the_order_of_pairs_and_unpaired_ignores_the_pairing():
    policy, reference = _batch(6)
    shuffle = torch.randperm(PAIRS, generator=torch.Generator().manual_seed(0))

    def permuted(logps: PairLogps, chosen_order, rejected_order) -> PairLogps:
        tokens_c, tokens_r = logps.chosen_tokens[chosen_order], logps.rejected_tokens[rejected_order]
        return PairLogps(logps.chosen[chosen_order], logps.rejected[rejected_order], tokens_c, tokens_r)

    paired, unpaired = AOT(0.1), AOT(0.1, paired=False)
    same = permuted(policy, shuffle, shuffle), permuted(reference, shuffle, shuffle)
    torch.testing.assert_close(paired(*same).losses, paired(policy, reference).losses)
    order = torch.arange(PAIRS)
    repaired = permuted(policy, order, shuffle), permuted(reference, order, shuffle)  # rejected matched to others
    torch.testing.assert_close(unpaired(*repaired).losses, unpaired(policy, reference).losses)
    assert not torch.allclose(paired(*repaired).losses, paired(policy, reference).losses)


def test_aot_of_one_pair_is_cdpo():
    policy, reference = _batch(8)
    one = PairLogps(policy.chosen[:1], policy.rejected[:1], policy.chosen_tokens[:1], policy.rejected_tokens[:1])
    ref = PairLogps(
        reference.chosen[:1], reference.rejected[:1], reference.chosen_tokens[:1], reference.rejected_tokens[:1]
    )
    expected = CDPO(0.2, label_smoothing=0.1)(one, ref).losses
    torch.testing.assert_close(AOT(0.2, label_smoothing=0.1)(one, ref).losses, expected)
    torch.testing.assert_close(AOT(0.2, label_smoothing=0.1, paired=False)(one, ref).losses, expected)


def test_discopop_is_finite_for_huge_margins():
    # TRL's σ(z/τ)·exp(−z) is 0·∞ = NaN for z ≪ 0 in fp32; here the loss stays the logistic one
    losses = discopop_loss(torch.tensor([-1e4, 1e4]), 1.0, 0.05)
    assert torch.isfinite(losses).all()
    assert losses[0].item() == pytest.approx(1e4, rel=1e-6) and losses[1].item() == pytest.approx(0.0, abs=1e-6)


def test_discopop_is_not_convex_near_zero():
    # the published loss (τ = 0.05) has a local minimum near β·Δ ≈ −0.12 and a local maximum near 0.07
    def slope(z: float) -> float:
        margin = torch.tensor([z], dtype=torch.float64, requires_grad=True)
        discopop_loss(margin, 1.0, 0.05).sum().backward()
        return margin.grad.item()

    assert slope(-0.2) < 0 < slope(-0.1) and slope(0.0) > 0 > slope(0.1)


def test_bco_delta_is_the_running_mean_of_training_batch_means():
    objective, reference = BCOPair(0.5), _pairs(10)
    batch_means = []
    for seed in (11, 12, 13):
        policy = _pairs(seed)
        a, b = _ratios(policy, reference)
        batch_means.append(float(torch.cat((0.5 * a, 0.5 * b)).mean()))
        objective.observe(policy, reference)  # a training batch
        output = objective(policy, reference)
        assert output.metrics["delta"].item() == pytest.approx(sum(batch_means) / len(batch_means), rel=1e-5)
    delta = sum(batch_means) / 3
    policy = _pairs(14)
    output = objective(policy, reference)  # not observed (validation, a placeholder): δ is used, not updated
    assert objective(policy, reference).metrics["delta"].item() == pytest.approx(delta, rel=1e-5)
    assert output.metrics["delta"].item() == pytest.approx(delta, rel=1e-5)
    a, b = _ratios(policy, reference)
    expected = _neg_log_sigmoid(0.5 * a - delta) + _neg_log_sigmoid(delta - 0.5 * b)
    torch.testing.assert_close(output.losses.double(), expected, **TOL)
    torch.testing.assert_close(output.metrics["chosen_loss"].double(), _neg_log_sigmoid(0.5 * a - delta).mean(), **TOL)
    objective.observe(policy, reference)  # training again
    assert objective(policy, reference).metrics["delta"].item() != pytest.approx(delta, rel=1e-5)


def test_bco_delta_is_zero_before_any_training_batch():
    output = BCOPair(0.1)(_pairs(15), _pairs(16))  # with gradients, as a training placeholder would be called
    assert output.metrics["delta"].item() == 0.0


@pytest.mark.parametrize(
    ("objective", "terms"),
    [(NCAPair(0.1), _hand_nca), (SPPOHard(0.1), _hand_sppo), (APOZero(0.1), _hand_apo_zero)],
    ids=["nca_pair", "sppo_hard", "apo_zero"],
)
def test_logged_terms_add_up_to_the_loss(objective, terms):
    output = objective(_pairs(17), _pairs(18))
    assert set(output.metrics) == {"chosen_loss", "rejected_loss"}
    torch.testing.assert_close(output.metrics["chosen_loss"] + output.metrics["rejected_loss"], output.losses.mean())


# --- Gradient directions --------------------------------------------------------------------------------------


def _gradients(objective, chosen: float, rejected: float, ref_chosen: float, ref_rejected: float):
    """d mean loss / d π_c and d π_r for a batch of 4 identical pairs."""
    policy = PairLogps(
        torch.full((4,), chosen, requires_grad=True),
        torch.full((4,), rejected, requires_grad=True),
        torch.full((4,), 5),
        torch.full((4,), 5),
    )
    reference = PairLogps(
        torch.full((4,), ref_chosen), torch.full((4,), ref_rejected), policy.chosen_tokens, policy.chosen_tokens
    )
    objective(policy, reference).losses.mean().backward()
    return policy.chosen.grad.sum().item(), policy.rejected.grad.sum().item()


ALL = {
    "cdpo": CDPO(0.1),
    "robust": Robust(0.1),
    "ipo": IPO(0.1),
    "ipo_per_token": IPO(0.1, length_normalized=True),
    "hinge": Hinge(0.1),
    "exo_pair": EXOPair(0.1),
    "nca_pair": NCAPair(0.1),
    "bco_pair": BCOPair(0.1),
    "sppo_hard": SPPOHard(0.1),
    "apo_zero": APOZero(0.1),
    "apo_down": APODown(0.1),
    "aot": AOT(0.1),
    "aot_unpaired": AOT(0.1, paired=False),
    "discopop": DiscoPOP(0.1),
    "rpo": RPO(0.1),
}


@pytest.mark.parametrize("name", sorted(set(ALL) - {"apo_down", "discopop", "bco_pair"}))
def test_descent_raises_chosen_and_lowers_rejected_at_zero_margin(name):
    grad_chosen, grad_rejected = _gradients(ALL[name], -5.0, -5.0, -5.0, -5.0)  # Δ = 0, equal log-probs
    assert grad_chosen < 0 < grad_rejected


def test_bco_gradient_direction_after_a_few_updates():
    objective = BCOPair(0.1)
    for seed in (19, 20, 21):
        objective.observe(_pairs(seed), _pairs(seed + 10))
    assert objective(_pairs(19), _pairs(29)).metrics["delta"].item() != 0.0
    grad_chosen, grad_rejected = _gradients(objective, -5.0, -5.0, -5.0, -5.0)
    assert grad_chosen < 0 < grad_rejected


@pytest.mark.parametrize("margin", [-10.0, 10.0])  # β·Δ = ∓1: outside the non-convex bump around 0
def test_discopop_gradient_direction_away_from_zero(margin):
    grad_chosen, grad_rejected = _gradients(DiscoPOP(0.1), -5.0 + margin, -5.0, -5.0, -5.0)
    assert grad_chosen < 0 < grad_rejected


def test_apo_down_lowers_rejected_more_than_chosen():
    # at Δ = 0 the chosen gradient vanishes (DPO's is < 0); once the rejected reward is below, it lowers chosen too
    grad_chosen, grad_rejected = _gradients(APODown(0.1), -5.0, -5.0, -5.0, -5.0)
    assert grad_chosen == pytest.approx(0.0, abs=1e-7) and grad_rejected > 0
    grad_chosen, grad_rejected = _gradients(APODown(0.1), -5.0, -15.0, -5.0, -5.0)  # r_c = 0, r_r = −1
    assert 0 < grad_chosen < grad_rejected


# --- dtypes and detached rewards ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ALL))
def test_fp32_losses_and_detached_rewards_from_bf16(name):
    policy = _pairs(22, dtype=torch.bfloat16, requires_grad=True)
    reference = _pairs(23, dtype=torch.bfloat16)
    output = ALL[name](policy, reference)
    assert output.losses.dtype == torch.float32 and output.losses.requires_grad
    assert output.chosen_rewards.dtype == torch.float32 and output.rejected_rewards.dtype == torch.float32
    assert not output.chosen_rewards.requires_grad and not output.rejected_rewards.requires_grad
    assert all(not value.requires_grad for value in output.metrics.values())
    assert torch.isfinite(output.losses).all()


# --- hyperparameter checks ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "message"),
    [
        *[(lambda cls=cls: cls(beta=0.0), "beta: must be > 0, got 0.0") for cls in (CDPO, Robust, IPO, Hinge)],
        *[(lambda cls=cls: cls(beta=-1.0), "beta: must be > 0, got -1.0") for cls in (EXOPair, NCAPair, BCOPair)],
        *[(lambda cls=cls: cls(beta=0.0), "beta: must be > 0, got 0.0") for cls in (SPPOHard, APOZero, APODown)],
        *[(lambda cls=cls: cls(beta=0.0), "beta: must be > 0, got 0.0") for cls in (AOT, DiscoPOP, RPO)],
        (lambda: CDPO(0.1, label_smoothing=0.5), "loss.label_smoothing: must be in [0.0, 0.5), got 0.5"),
        (lambda: CDPO(0.1, label_smoothing=-0.1), "loss.label_smoothing: must be in [0.0, 0.5), got -0.1"),
        (lambda: Robust(0.1, label_smoothing=0.5), "loss.label_smoothing: must be in [0.0, 0.5), got 0.5"),
        (lambda: AOT(0.1, label_smoothing=0.7), "loss.label_smoothing: must be in [0.0, 0.5), got 0.7"),
        (lambda: EXOPair(0.1, label_smoothing=0.0), "loss.label_smoothing: must be in (0, 0.5), got 0.0"),
        (lambda: EXOPair(0.1, label_smoothing=0.5), "loss.label_smoothing: must be in (0, 0.5), got 0.5"),
        (lambda: DiscoPOP(0.1, tau=0.0), "loss.tau: must be > 0, got 0.0"),
        (lambda: RPO(0.1, alpha=-1.0), "loss.alpha: must be ≥ 0, got -1.0"),
    ],
)
def test_bad_hyperparameters_fail_in_one_line(make, message):
    with pytest.raises(ConfigError) as error:
        make()
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


# --- conf options ---------------------------------------------------------------------------------------------

OPTIONS = {
    "cdpo": (CDPO, True),
    "robust": (Robust, True),
    "ipo": (IPO, True),
    "hinge": (Hinge, True),
    "exo_pair": (EXOPair, False),
    "nca_pair": (NCAPair, False),
    "bco_pair": (BCOPair, False),
    "sppo_hard": (SPPOHard, False),
    "apo_zero": (APOZero, False),
    "apo_down": (APODown, False),
    "aot": (AOT, False),
    "discopop": (DiscoPOP, False),
    "rpo": (RPO, False),
}


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_conf_option_composes_and_instantiates(option):
    cls, reference_free_ok = OPTIONS[option]
    cfg = compose(f"loss={option}", "beta=0.25")
    objective = instantiate(cfg.loss)
    assert type(objective) is cls and objective.name == option
    assert objective.beta == 0.25  # β comes from the top level
    assert objective.needs_reference and objective.reference_free_ok is reference_free_ok
