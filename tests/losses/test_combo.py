"""loss=combo: a weighted sum of objectives, with its metrics and its config checks."""

import pytest
import torch

from dpo_lightning.errors import ConfigError
from dpo_lightning.losses import PairLogps
from dpo_lightning.losses.combo import Combo
from dpo_lightning.losses.dpo import DPO
from dpo_lightning.losses.sft import SFT


def _logps(seed: int) -> PairLogps:
    generator = torch.Generator().manual_seed(seed)
    chosen, rejected = (-torch.rand(6, generator=generator, dtype=torch.float64) * 30 for _ in range(2))
    lengths = torch.randint(1, 20, (6,), generator=generator)
    return PairLogps(chosen, rejected, lengths, lengths + 1)


def test_combo_is_the_weighted_sum_of_its_parts():
    policy, reference = _logps(0), _logps(1)
    dpo, sft = DPO(beta=0.2), SFT(length_normalized=True)
    combo = Combo([dpo, sft], [0.8, 1.5])
    output = combo(policy, reference)
    expected = 0.8 * dpo(policy, reference).losses + 1.5 * sft(policy, None).losses
    torch.testing.assert_close(output.losses, expected)
    torch.testing.assert_close(output.chosen_rewards, dpo(policy, reference).chosen_rewards)  # DPO's rewards
    torch.testing.assert_close(output.metrics["sft/loss"], sft(policy, None).losses.mean())
    assert combo.needs_reference and not Combo([sft], [1.0]).needs_reference


def test_a_combo_without_rewarding_parts_reports_no_rewards():
    output = Combo([SFT()], [2.0])(_logps(0), None)
    assert output.chosen_rewards is None
    torch.testing.assert_close(output.losses, 2.0 * -_logps(0).chosen.float())


@pytest.mark.parametrize(
    ("parts", "weights", "message"),
    [
        ([DPO(beta=0.1), SFT()], [1.0], r"^loss\.weights: needs one weight per part: 2 parts, 1 weights$"),
        ([DPO(beta=0.1)], [-1.0], r"^loss\.weights: must be ≥ 0 and not all 0"),
        ([DPO(beta=0.1)], [0.0], r"^loss\.weights: must be ≥ 0 and not all 0"),
        ([], [], r"^loss\.parts: needs at least one objective$"),
        ([SFT(), SFT(length_normalized=True)], [1.0, 1.0], r"^loss\.parts: each objective may appear once"),
    ],
)
def test_bad_combinations_fail_in_one_line(parts, weights, message):
    with pytest.raises(ConfigError, match=message):
        Combo(parts, weights)
