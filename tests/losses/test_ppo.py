"""PPO's pure pieces against float64 hand computations written with Python loops and `math`."""

import math
import random

import pytest
import torch

from dpo_lightning.losses.ppo import (
    AdaptiveKLController,
    FixedKLController,
    explained_variance,
    gae,
    kl_penalised_rewards,
    masked_mean,
    masked_var,
    ppo_policy_loss,
    ppo_value_loss,
    whiten,
)

LENGTHS = [5, 1, 3, 6]  # ragged rows of a right-padded [4, 6] batch
T = 6


def _mask(lengths=LENGTHS, width=T) -> torch.Tensor:
    return torch.tensor([[t < n for t in range(width)] for n in lengths])


def _rows(seed: int, lengths=LENGTHS, width=T, scale=1.0, padding=float("nan")) -> list[list[float]]:
    """Random Python floats on the real tokens, `padding` after them."""
    rng = random.Random(seed)
    return [[rng.gauss(0.0, scale) if t < n else padding for t in range(width)] for n in lengths]


def _tensor(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def _real(rows, lengths=LENGTHS) -> list[float]:
    """The real entries of `rows`, flattened."""
    return [x for row, n in zip(rows, lengths, strict=True) for x in row[:n]]


def _padded(rows, lengths=LENGTHS, width=T) -> list[list[float]]:
    """`rows` with 0 at the padded positions."""
    return [[row[t] if t < n else 0.0 for t in range(width)] for row, n in zip(rows, lengths, strict=True)]


def _close(actual: torch.Tensor, expected, atol=1e-6, rtol=1e-6) -> None:
    assert actual.dtype == torch.float32
    torch.testing.assert_close(actual.double(), _tensor(expected), atol=atol, rtol=rtol)


def _float32_log(target: float) -> float:
    """A float32 log-ratio whose fp32 `exp` is exactly `target` (a clip boundary): log(target) or a neighbour."""
    guess = torch.tensor(math.log(target), dtype=torch.float32)
    for direction in (math.inf, -math.inf):
        candidate = guess
        for _ in range(8):
            if torch.exp(candidate).item() == target:
                return candidate.item()
            candidate = torch.nextafter(candidate, torch.tensor(direction))
    raise AssertionError(f"no float32 x with exp(x) == {target}")


# --- KL-penalised rewards ------------------------------------------------------------------------------------------


def test_kl_penalised_rewards_by_hand():
    # Row 0: three real tokens; row 1: one; row 2: two. Padding holds NaN and inf, which must not leak.
    policy = [[-1.0, -2.0, -0.5], [-0.3, math.nan, math.inf], [-1.2, -0.7, -math.inf]]
    reference = [[-1.5, -1.0, -0.5], [-0.9, 0.0, math.nan], [-1.0, -1.7, 0.0]]
    sequence_rewards = [2.0, -1.0, 0.5]
    mask = torch.tensor([[True, True, True], [True, False, False], [True, True, False]])
    kl_coef = 0.1
    # kl = policy − reference on real tokens: row 0: 0.5, −1.0, 0.0; row 1: 0.6; row 2: −0.2, 1.0
    expected_kl = [[0.5, -1.0, 0.0], [0.6, 0.0, 0.0], [-0.2, 1.0, 0.0]]
    # r = −0.1·kl, plus R at the last real token
    expected_rewards = [[-0.05, 0.1, 0.0 + 2.0], [-0.06 - 1.0, 0.0, 0.0], [0.02, -0.1 + 0.5, 0.0]]
    rewards, kl = kl_penalised_rewards(_tensor(policy), _tensor(reference), _tensor(sequence_rewards), mask, kl_coef)
    _close(kl, expected_kl)
    _close(rewards, expected_rewards)


@pytest.mark.parametrize("kl_coef", [0.0, 0.05, 1.0])
def test_kl_penalised_rewards_random_against_loops(kl_coef):
    policy, reference = _rows(1, padding=math.inf), _rows(2, padding=math.nan)
    sequence_rewards = [3.0, -2.0, 0.25, 1.5]
    expected_kl = [[0.0] * T for _ in LENGTHS]
    expected_rewards = [[0.0] * T for _ in LENGTHS]
    for b, n in enumerate(LENGTHS):
        for t in range(n):
            expected_kl[b][t] = policy[b][t] - reference[b][t]
            expected_rewards[b][t] = -kl_coef * expected_kl[b][t] + (sequence_rewards[b] if t == n - 1 else 0.0)
    rewards, kl = kl_penalised_rewards(_tensor(policy), _tensor(reference), _tensor(sequence_rewards), _mask(), kl_coef)
    _close(kl, expected_kl)
    _close(rewards, expected_rewards)


def test_the_sequence_reward_lands_on_the_last_real_token_only():
    logps = _tensor(_rows(3, padding=7.0))
    rewards, kl = kl_penalised_rewards(logps, logps, _tensor([1.0, 2.0, 3.0, 4.0]), _mask(), kl_coef=0.5)
    expected = [[float(b + 1) if t == n - 1 else 0.0 for t in range(T)] for b, n in enumerate(LENGTHS)]
    assert torch.equal(rewards, torch.tensor(expected, dtype=torch.float32))
    assert torch.equal(kl, torch.zeros(len(LENGTHS), T))


def test_kl_penalised_rewards_are_detached_fp32():
    policy = torch.tensor(_padded(_rows(4)), requires_grad=True)
    rewards, kl = kl_penalised_rewards(policy, torch.zeros(4, T), torch.ones(4), _mask(), 0.1)
    assert rewards.dtype == kl.dtype == torch.float32
    assert not rewards.requires_grad and not kl.requires_grad


@pytest.mark.parametrize(
    "mask",
    [
        [[True, False, True]],  # a gap: not right-padded
        [[False, True, True]],  # left-padded
        [[False, False, False]],  # no real token
    ],
)
def test_masks_that_are_not_non_empty_prefixes_are_refused(mask):
    mask = torch.tensor(mask)
    zeros = torch.zeros(mask.shape)
    with pytest.raises(ValueError, match="mask"):
        kl_penalised_rewards(zeros, zeros, torch.zeros(1), mask, 0.1)
    with pytest.raises(ValueError, match="mask"):
        gae(zeros, zeros, mask, 1.0, 0.95)


def test_a_non_bool_mask_or_a_mismatched_shape_is_refused():
    zeros = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="bool"):
        masked_mean(zeros, torch.ones(2, 3))
    with pytest.raises(ValueError, match="like the mask"):
        ppo_policy_loss(zeros, zeros, torch.zeros(2, 4), torch.ones(2, 3, dtype=torch.bool), 0.2)


# --- GAE -----------------------------------------------------------------------------------------------------------


def _gae_by_hand(rewards, values, gamma, lam, lengths=LENGTHS, width=T):
    """δ_t = r_t + γ V_{t+1} − V_t (V_n = 0) and the direct double sum A_t = Σ_k (γλ)^k δ_{t+k}."""
    advantages, returns = [], []
    for r, v, n in zip(rewards, values, lengths, strict=True):
        deltas = [r[t] + gamma * (v[t + 1] if t + 1 < n else 0.0) - v[t] for t in range(n)]
        a = [sum((gamma * lam) ** k * deltas[t + k] for k in range(n - t)) for t in range(n)]
        advantages.append(a + [0.0] * (width - n))
        returns.append([a[t] + v[t] for t in range(n)] + [0.0] * (width - n))
    return advantages, returns


GAMMA_LAMBDA = [(1.0, 0.95), (0.99, 0.95), (0.9, 0.5), (1.0, 1.0), (0.8, 1.0), (1.0, 0.0), (0.7, 0.0)]


@pytest.mark.parametrize(("gamma", "lam"), GAMMA_LAMBDA)
def test_gae_is_the_direct_double_sum(gamma, lam):
    rewards, values = _rows(10, padding=math.nan), _rows(11, padding=math.inf)
    advantages, returns = gae(_tensor(rewards), _tensor(values), _mask(), gamma, lam)
    expected_advantages, expected_returns = _gae_by_hand(rewards, values, gamma, lam)
    _close(advantages, expected_advantages, atol=1e-5)
    _close(returns, expected_returns, atol=1e-5)


@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_gae_with_lambda_one_returns_the_discounted_reward_to_go_whatever_the_values(gamma):
    rewards = _rows(12, padding=0.0)
    reward_to_go = [
        [sum(gamma**k * row[t + k] for k in range(n - t)) if t < n else 0.0 for t in range(T)]
        for row, n in zip(rewards, LENGTHS, strict=True)
    ]
    for seed in (13, 14):
        values = _rows(seed, scale=5.0)
        advantages, returns = gae(_tensor(rewards), _tensor(values), _mask(), gamma, 1.0)
        _close(returns, reward_to_go, atol=1e-5)
        _close(
            advantages,
            [
                [g - v for g, v in zip(gs, vs, strict=True)]
                for gs, vs in zip(reward_to_go, _padded(values), strict=True)
            ],
            atol=1e-5,
        )


def test_gae_with_lambda_zero_is_the_td_error():
    rewards, values, gamma = _rows(15), _rows(16), 0.9
    deltas = [
        [(r[t] + gamma * (v[t + 1] if t + 1 < n else 0.0) - v[t]) if t < n else 0.0 for t in range(T)]
        for r, v, n in zip(rewards, values, LENGTHS, strict=True)
    ]
    advantages, _ = gae(_tensor(rewards), _tensor(values), _mask(), gamma, 0.0)
    _close(advantages, deltas)


def test_gae_ignores_padding_and_is_detached():
    rewards, values = _tensor(_rows(17, padding=0.0)), _tensor(_rows(18, padding=0.0))
    first = gae(rewards, values, _mask(), 1.0, 0.95)
    padding = ~_mask()
    rewards[padding], values[padding] = 1e6, -math.inf
    second = gae(rewards.requires_grad_(), values, _mask(), 1.0, 0.95)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not second[0].requires_grad and not second[1].requires_grad
    assert (second[0][padding] == 0).all() and (second[1][padding] == 0).all()


# --- masked statistics and whitening -------------------------------------------------------------------------------


def _mean_and_var(xs: list[float], unbiased=True) -> tuple[float, float]:
    mean = sum(xs) / len(xs)
    return mean, sum((x - mean) ** 2 for x in xs) / (len(xs) - 1 if unbiased else len(xs))


@pytest.mark.parametrize("unbiased", [True, False])
def test_masked_mean_and_var_by_hand(unbiased):
    rows = _rows(20, scale=3.0, padding=math.nan)
    mean, var = _mean_and_var(_real(rows), unbiased)
    assert masked_mean(_tensor(rows), _mask()).item() == pytest.approx(mean, rel=1e-6, abs=1e-6)
    assert masked_var(_tensor(rows), _mask(), unbiased=unbiased).item() == pytest.approx(var, rel=1e-6)


@pytest.mark.parametrize("shift_mean", [True, False])
def test_whiten_by_hand(shift_mean):
    rows = [[x + 4.0 for x in row] for row in _rows(21, scale=2.5, padding=0.0)]
    mean, var = _mean_and_var(_real(rows))
    expected = [
        [((row[t] - mean) / math.sqrt(var + 1e-8) + (0.0 if shift_mean else mean)) if t < n else 0.0 for t in range(T)]
        for row, n in zip(rows, LENGTHS, strict=True)
    ]
    _close(whiten(_tensor(rows), _mask(), shift_mean=shift_mean), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shift_mean", [True, False])
def test_whitened_entries_have_mean_zero_and_unit_variance(shift_mean):
    rows = [[x * 3.0 - 2.0 for x in row] for row in _rows(22, padding=0.0)]
    mean = _mean_and_var(_real(rows))[0]
    whitened = whiten(_tensor(rows), _mask(), shift_mean=shift_mean).double().tolist()
    out_mean, out_var = _mean_and_var(_real(whitened))
    assert out_mean == pytest.approx(0.0 if shift_mean else mean, abs=1e-6)
    assert out_var == pytest.approx(1.0, rel=1e-5)
    assert all(whitened[b][t] == 0.0 for b, n in enumerate(LENGTHS) for t in range(n, T))


def test_whiten_ignores_padding():
    x = _tensor(_rows(23, padding=0.0))
    first = whiten(x, _mask())
    for padding in (1e6, -3.0, math.nan, math.inf):
        changed = x.clone()
        changed[~_mask()] = padding
        assert torch.equal(whiten(changed, _mask()), first)
        assert torch.equal(whiten(changed, _mask(), shift_mean=False), whiten(x, _mask(), shift_mean=False))


# --- the clipped policy loss ---------------------------------------------------------------------------------------

EPSILON = 0.25  # 1 ± ε = 0.75, 1.25: exact in binary
# Per column: (label, the ratio). Each row has one advantage.
RATIO_CASES = [
    ("below", 0.5),
    ("lower boundary", 0.75),
    ("inside", 0.9),
    ("one", 1.0),
    ("inside", 1.1),
    ("upper boundary", 1.25),
    ("above", 1.6),
]
ADVANTAGES = [1.5, -0.8, 0.0]
# The clipped term −A·clip(r) is strictly the larger only above 1 + ε for A > 0, only below 1 − ε for A < 0, never
# at a boundary (the two terms are equal there) and never for A = 0.
CLIPPED = {(1.5, "above"), (-0.8, "below")}


def _boundary_batch():
    """[3, 7 + 2] log-ratios (old log-probs 0) for every (advantage, ratio) case, two NaN padding columns per row."""
    log_ratios = [
        _float32_log(ratio) if "boundary" in label else float(torch.tensor(math.log(ratio), dtype=torch.float32))
        for label, ratio in RATIO_CASES
    ]
    width = len(RATIO_CASES) + 2
    logps = torch.tensor([[*log_ratios, math.nan, math.nan] for _ in ADVANTAGES], requires_grad=True)
    advantages = torch.tensor([[a] * width for a in ADVANTAGES])
    mask = torch.tensor([[t < len(RATIO_CASES) for t in range(width)] for _ in ADVANTAGES])
    return log_ratios, logps, advantages, mask


def test_the_boundary_log_ratios_hit_the_boundaries_exactly():
    log_ratios, *_ = _boundary_batch()
    ratios = torch.exp(torch.tensor(log_ratios, dtype=torch.float32)).tolist()
    assert ratios[1] == 1 - EPSILON and ratios[5] == 1 + EPSILON


def test_the_clipped_policy_loss_across_the_boundaries():
    log_ratios, logps, advantages, mask = _boundary_batch()
    old_logps = torch.zeros_like(logps)
    old_logps[~mask] = math.inf
    loss, clip_fraction, approx_kl = ppo_policy_loss(logps, old_logps, advantages, mask, EPSILON)
    n = len(ADVANTAGES) * len(RATIO_CASES)

    terms, flags, grads = [], [], []
    for a in ADVANTAGES:
        row = []
        for (label, _), log_ratio in zip(RATIO_CASES, log_ratios, strict=True):
            ratio = math.exp(log_ratio)
            clipped_ratio = min(max(ratio, 1 - EPSILON), 1 + EPSILON)
            terms.append(max(-a * ratio, -a * clipped_ratio))
            flags.append((a, label) in CLIPPED)
            row.append(0.0 if (a, label) in CLIPPED else -a * ratio / n)  # d/d logps of −A·exp(logps − old)/n
        grads.append([*row, 0.0, 0.0])

    assert loss.dtype == torch.float32 and loss.shape == ()
    assert loss.item() == pytest.approx(sum(terms) / n, rel=1e-6)
    assert clip_fraction.item() == pytest.approx(sum(flags) / n) == pytest.approx(2 / n)
    assert approx_kl.item() == pytest.approx(len(ADVANTAGES) * sum(0.5 * x**2 for x in log_ratios) / n, rel=1e-6)
    assert not clip_fraction.requires_grad and not approx_kl.requires_grad

    loss.backward()
    torch.testing.assert_close(logps.grad.double(), _tensor(grads), atol=1e-7, rtol=1e-6)
    clipped = torch.tensor([[(a, label) in CLIPPED for label, _ in RATIO_CASES] + [False, False] for a in ADVANTAGES])
    assert (logps.grad[clipped] == 0).all()  # exactly 0 where the clipped term is taken
    assert (logps.grad[mask & ~clipped & (advantages != 0)] != 0).all()  # boundaries keep their gradient
    assert (logps.grad[~mask] == 0).all()


@pytest.mark.parametrize("clip_range", [0.1, 0.2, 0.5])
def test_the_clipped_policy_loss_on_random_tokens(clip_range):
    logps = _rows(30, scale=0.3, padding=math.nan)
    noise = _rows(31, scale=0.3, padding=math.inf)
    old_logps = [[lp + e for lp, e in zip(*rows, strict=True)] for rows in zip(logps, noise, strict=True)]
    advantages = _rows(32, padding=math.nan)
    terms, clipped, kls = [], [], []
    for b, n in enumerate(LENGTHS):
        for t in range(n):
            ratio = math.exp(logps[b][t] - old_logps[b][t])
            a = advantages[b][t]
            unclipped_term, clipped_term = -a * ratio, -a * min(max(ratio, 1 - clip_range), 1 + clip_range)
            terms.append(max(unclipped_term, clipped_term))
            clipped.append(clipped_term > unclipped_term)
            kls.append(0.5 * (logps[b][t] - old_logps[b][t]) ** 2)
    loss, clip_fraction, approx_kl = ppo_policy_loss(
        _tensor(logps), _tensor(old_logps), _tensor(advantages), _mask(), clip_range
    )
    assert 0 < sum(clipped) < len(clipped)  # the case exercises both branches
    assert loss.item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)
    assert clip_fraction.item() == pytest.approx(sum(clipped) / len(clipped))
    assert approx_kl.item() == pytest.approx(sum(kls) / len(kls), rel=1e-5)


def test_the_policy_loss_at_ratio_one_is_minus_the_mean_advantage():
    advantages = _rows(33, padding=math.nan)
    logps = _tensor(_rows(34, padding=math.nan))
    loss, clip_fraction, approx_kl = ppo_policy_loss(logps, logps, _tensor(advantages), _mask(), 0.2)
    assert loss.item() == pytest.approx(-sum(_real(advantages)) / sum(LENGTHS), rel=1e-6)
    assert clip_fraction.item() == 0.0 and approx_kl.item() == 0.0


# --- the clipped value loss ----------------------------------------------------------------------------------------

EPSILON_V = 0.25
# (value, return, clipped term strictly taken), old value 0: |V − V_old| > ε_v and the clipped error larger.
VALUE_CASES = [
    (0.5, 1.0, True),  # moved towards R past the clip range: the clipped error (0.75²) beats the unclipped (0.5²)
    (0.5, 0.0, False),  # overshot past R: the unclipped error (0.5²) is the larger one
    (-0.5, -1.0, True),
    (-0.5, 0.0, False),
    (0.25, 1.0, False),  # exactly at +ε_v: V_clip = V, equal errors, not counted
    (-0.25, -1.0, False),  # exactly at −ε_v
    (0.1, 1.0, False),  # inside: V_clip = V
    (-0.1, -2.0, False),
    (0.75, 0.55, True),  # past the range and past R, but less far: (0.25 − 0.55)² = 0.09 > (0.75 − 0.55)² = 0.04
]


def test_the_clipped_value_loss_across_the_boundaries():
    width = len(VALUE_CASES) + 1
    values = torch.tensor([[v for v, _, _ in VALUE_CASES] + [math.nan]], requires_grad=True)
    returns = torch.tensor([[r for _, r, _ in VALUE_CASES] + [math.inf]])
    old_values = torch.tensor([[0.0] * len(VALUE_CASES) + [math.nan]])
    mask = torch.tensor([[t < len(VALUE_CASES) for t in range(width)]])
    loss, clip_fraction = ppo_value_loss(values, old_values, returns, mask, EPSILON_V)
    n = len(VALUE_CASES)

    errors, grads = [], []
    for v32, r32, clipped in VALUE_CASES:
        v, r = float(torch.tensor(v32)), float(torch.tensor(r32))  # the fp32 inputs, exactly
        v_clipped = min(max(v, -EPSILON_V), EPSILON_V)
        errors.append(max((v - r) ** 2, (v_clipped - r) ** 2))
        assert ((v_clipped - r) ** 2 > (v - r) ** 2) == clipped  # the table's labels, checked in float64
        grads.append(0.0 if clipped else (v - r) / n)  # d/dV of ½ (V − R)² / n
    grads.append(0.0)

    assert loss.dtype == torch.float32 and loss.shape == ()
    assert loss.item() == pytest.approx(0.5 * sum(errors) / n, rel=1e-6)
    assert clip_fraction.item() == pytest.approx(sum(c for _, _, c in VALUE_CASES) / n) == pytest.approx(3 / n)
    assert not clip_fraction.requires_grad
    loss.backward()
    torch.testing.assert_close(values.grad.double(), _tensor([grads]), atol=1e-7, rtol=1e-6)
    clipped_mask = torch.tensor([[c for _, _, c in VALUE_CASES] + [False]])
    assert (values.grad[clipped_mask] == 0).all()
    assert (values.grad[mask & ~clipped_mask] != 0).all()


@pytest.mark.parametrize("clip_range_value", [0.05, 0.2, 1.0])
def test_the_clipped_value_loss_on_random_tokens(clip_range_value):
    values, old_values, returns = _rows(40, padding=math.nan), _rows(41, padding=math.inf), _rows(42)
    errors, clipped = [], []
    for b, n in enumerate(LENGTHS):
        for t in range(n):
            v, old, r = values[b][t], old_values[b][t], returns[b][t]
            v_clipped = old + min(max(v - old, -clip_range_value), clip_range_value)
            errors.append(0.5 * max((v - r) ** 2, (v_clipped - r) ** 2))
            clipped.append((v_clipped - r) ** 2 > (v - r) ** 2)
    loss, clip_fraction = ppo_value_loss(
        _tensor(values), _tensor(old_values), _tensor(returns), _mask(), clip_range_value
    )
    assert loss.item() == pytest.approx(sum(errors) / len(errors), rel=1e-5)
    assert clip_fraction.item() == pytest.approx(sum(clipped) / len(clipped))


# --- explained variance --------------------------------------------------------------------------------------------


def test_explained_variance_by_hand():
    values, returns = _rows(50, padding=math.nan), _rows(51, padding=math.inf)
    residuals = [r - v for r, v in zip(_real(returns), _real(values), strict=True)]
    expected = 1 - _mean_and_var(residuals, unbiased=False)[1] / _mean_and_var(_real(returns), unbiased=False)[1]
    result = explained_variance(_tensor(values), _tensor(returns), _mask())
    assert isinstance(result, float)
    assert result == pytest.approx(expected, rel=1e-9)


def test_explained_variance_of_a_perfect_and_of_a_mean_value_head():
    returns = _rows(52, padding=math.nan)
    mean = sum(_real(returns)) / sum(LENGTHS)
    assert explained_variance(_tensor(returns), _tensor(returns), _mask()) == pytest.approx(1.0)
    assert explained_variance(torch.full((4, T), mean), _tensor(returns), _mask()) == pytest.approx(0.0, abs=1e-9)


def test_explained_variance_is_nan_when_the_returns_are_constant():
    returns = torch.where(_mask(), 0.1, 5.0)  # constant on the real tokens; the padding differs
    assert math.isnan(explained_variance(_tensor(_rows(53)), returns, _mask()))


# --- the KL controllers --------------------------------------------------------------------------------------------


def test_the_adaptive_controller_by_hand():
    controller = AdaptiveKLController(init_kl_coef=0.2, target=6.0, horizon=10000)
    expected = 0.2
    for kl, n_steps in [(7.0, 256), (5.0, 256), (6.0, 512), (6.6, 64)]:  # errors 1/6, −1/6, 0, 0.1: inside ±20 %
        controller.update(kl, n_steps)
        expected *= 1 + (kl / 6.0 - 1) * n_steps / 10000
        assert controller.value == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    ("kl", "error"),
    [(100.0, 0.2), (7.2, 0.2), (7.5, 0.2), (0.0, -0.2), (4.8, -0.2), (1.0, -0.2), (6.9, 0.15), (5.4, -0.1)],
)
def test_the_adaptive_controller_clips_the_error_at_twenty_percent(kl, error):
    controller = AdaptiveKLController(0.1, target=6.0, horizon=1000)
    controller.update(kl, n_steps=1000)  # a whole horizon: β · (1 + error)
    assert controller.value == pytest.approx(0.1 * (1 + error), rel=1e-12)


def test_the_controllers_survive_a_checkpoint():
    controller = AdaptiveKLController(0.05, target=3.0, horizon=500)
    for kl in (9.0, 1.0, 4.0):
        controller.update(kl, 64)
    resumed = AdaptiveKLController(0.05, target=3.0, horizon=500)
    resumed.load_state_dict(controller.state_dict())
    assert resumed.value == controller.value != 0.05
    controller.update(5.0, 32)
    resumed.update(5.0, 32)
    assert resumed.value == controller.value

    fixed = FixedKLController(0.3)
    fixed.update(100.0, 10_000)
    assert fixed.value == 0.3
    other = FixedKLController(0.3)
    other.load_state_dict(fixed.state_dict())
    assert other.value == 0.3 and other.state_dict() == {"value": 0.3}


@pytest.mark.parametrize(
    "arguments", [{"init_kl_coef": 0.0}, {"target": 0.0}, {"horizon": -1.0}, {"init_kl_coef": math.nan}]
)
def test_the_adaptive_controller_refuses_bad_settings(arguments):
    with pytest.raises(ValueError, match=next(iter(arguments))):
        AdaptiveKLController(**{"init_kl_coef": 0.1, "target": 6.0, "horizon": 10000, **arguments})
