"""Ranked data end to end: ranks and pair modes, the one-row-per-prompt ranking layouts against the padded
reference, the module's ranking and pairwise paths, and ranked data through the data module and config."""

from __future__ import annotations

import dataclasses
import math
from functools import partial

import pytest
import scipy.stats
import torch
from helpers import ADAMW, DPO, EOS, MODEL, PAD, VOCAB, compose, random_rankings, tiny_causal_lm, write_jsonl
from omegaconf import OmegaConf

from dpo_lightning.data.collate import (
    collate_packed,
    collate_padded,
    collate_prefix_shared,
    placeholder_batch,
)
from dpo_lightning.data.rankings import ranking_pairs, ranking_problem, ranks_from_scores, scores_problem
from dpo_lightning.data.tokenize import TokenizedPair, TokenizedRanking
from dpo_lightning.errors import ConfigError, DataError
from dpo_lightning.losses.plackett_luce import plackett_luce_loss
from dpo_lightning.models import logprobs
from dpo_lightning.models.loading import load_tokenizer
from dpo_lightning.runtime.checks import check_rankings
from dpo_lightning.runtime.run import build_datamodule
from dpo_lightning.training.module import DPOLitModule

PLACKETT_LUCE = {"_target_": "dpo_lightning.losses.plackett_luce.PlackettLuce", "beta": 0.1}
SHARED = {
    "prefix_shared": partial(collate_prefix_shared, pad_token_id=PAD),
    "packed": partial(collate_packed, pad_token_id=PAD, max_tokens=48),
    "packed_to_longest": partial(collate_packed, pad_token_id=PAD),
}


def flattened(rankings: list[TokenizedRanking], mode: str = "all") -> list[TokenizedPair]:
    """The same rankings as pairs, what `data.rankings=pairs` makes of them."""
    return [
        TokenizedPair(r.prompt_ids, r.response_ids[better], r.response_ids[worse])
        for r in rankings
        for better, worse in ranking_pairs(r.ranks, mode)
    ]


# --- ranks, pairs and checks (data/rankings.py) -------------------------------------------------------------


def test_competition_ranks_share_ties_and_skip():
    assert ranks_from_scores([9, 7, 7, 2]) == [0, 1, 1, 3]
    assert ranks_from_scores([0.1, 0.5]) == [1, 0]
    assert ranks_from_scores([3, 3, 1]) == [0, 0, 2]


def test_pair_modes_list_ordered_pairs_and_never_pair_ties():
    ranks = [1, 0, 1, 3]  # response 1 best; 0 and 2 tied; 3 worst
    assert ranking_pairs(ranks, "all") == [(1, 0), (1, 2), (1, 3), (0, 3), (2, 3)]
    assert ranking_pairs(ranks, "adjacent") == [(1, 0), (1, 2), (0, 3), (2, 3)]
    assert ranking_pairs(ranks, "best_vs_rest") == [(1, 0), (1, 2), (1, 3)]
    assert len(ranking_pairs([0, 1, 2, 3], "all")) == 6 and len(ranking_pairs([0, 1, 2, 3], "adjacent")) == 3
    with pytest.raises(ValueError, match="unknown ranking_pairs mode"):
        ranking_pairs(ranks, "some")


@pytest.mark.parametrize(
    "scores, problem",
    [
        ([1.0, "x"], "scores: score 1 is not a number ('x')"),
        ([1.0, True], "scores: score 1 is not a number (True)"),
        ([1.0, float("nan")], "scores: score 1 is not finite (nan)"),
        ([1.0], "scores: 1 scores for 2 responses"),
        ([2.0, 2.0], "scores: every response has the same score, so the ranking states no preference"),
        ("high", "scores: expected a list of numbers, got str"),
        ([1, 2.5], ""),
    ],
)
def test_scores_problems_name_the_field(scores, problem):
    assert scores_problem(scores, 2) == problem


@pytest.mark.parametrize(
    "ranking, problem",
    [
        ([0, 0, 1], "ranking: not a permutation of 0..2 (got [0, 0, 1])"),
        ([0, 1], "ranking: 2 entries for 3 responses"),
        ([0, 1, 3], "ranking: not a permutation of 0..2 (got [0, 1, 3])"),
        ([0, 1.0, 2], "ranking: expected a list of response indices, got [0, 1.0, 2]"),
        ([2, 0, 1], ""),
    ],
)
def test_ranking_problems_name_the_field(ranking, problem):
    assert ranking_problem(ranking, 3) == problem


# --- layouts: one row per prompt, K branches; the padded layout is the reference ----------------------------


@pytest.mark.parametrize("layout", sorted(SHARED))
@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_ranked_layouts_give_the_padded_logprobs_and_gradients(architecture, layout):
    """Every response's summed log-prob (rel. 1e-5) and the Plackett–Luce loss's gradients equal the padded
    forward's, where each response is a row of its own."""
    model = tiny_causal_lm(architecture)
    rankings = random_rankings(6, seed=3)
    results = {}
    for name, batch in (("padded", collate_padded(rankings, PAD)), (layout, SHARED[layout](rankings))):
        model.zero_grad()
        logps, _ = logprobs.sequence_logprobs(model, batch)  # [S]
        logps.sum().backward()
        results[name] = (logps.detach(), [p.grad.clone() for p in model.parameters()])
    (padded_logps, padded_grads), (logps, grads) = results["padded"], results[layout]
    assert logps.shape == (sum(len(r.response_ids) for r in rankings),)
    torch.testing.assert_close(logps, padded_logps, rtol=1e-5, atol=0)
    for grad, padded_grad in zip(grads, padded_grads, strict=True):
        torch.testing.assert_close(grad, padded_grad, rtol=1e-4, atol=1e-6)
    batch = SHARED[layout](rankings)
    assert batch.num_tokens == sum(len(r.prompt_ids) + sum(map(len, r.response_ids)) for r in rankings)


@pytest.mark.parametrize("layout", sorted(SHARED))
def test_a_branch_never_sees_another_branch(layout):
    """Changing one response's tokens changes that response's log-prob only: branches see the prompt, not each
    other (bit-identical log-probs for every other response)."""
    model = tiny_causal_lm("llama")
    rankings = random_rankings(5, seed=9)
    changed = [
        dataclasses.replace(r, response_ids=[[(t + 1) % VOCAB or 3 for t in r.response_ids[0]], *r.response_ids[1:]])
        for r in rankings
    ]
    with torch.no_grad():
        before, _ = logprobs.sequence_logprobs(model, SHARED[layout](rankings))
        after, _ = logprobs.sequence_logprobs(model, SHARED[layout](changed))
    firsts = torch.tensor([0, *torch.tensor([len(r.response_ids) for r in rankings]).cumsum(0)[:-1].tolist()])
    others = torch.ones(len(before), dtype=torch.bool)
    others[firsts] = False
    torch.testing.assert_close(after[others], before[others], rtol=0, atol=0)
    assert (after[firsts] != before[firsts]).all()


def test_a_ranked_batch_numbers_sequences_ranking_by_ranking_and_lists_the_configured_pairs():
    rankings = [
        TokenizedRanking([5], [[6, EOS], [7, EOS], [8, EOS]], [1, 0, 1]),
        TokenizedRanking([9], [[6], [7]], [0, 1]),
    ]
    batch = collate_prefix_shared(rankings, PAD, ranking_pairs="all")
    assert batch.ranks.tolist() == [1, 0, 1, 0, 1] and batch.groups.tolist() == [0, 0, 0, 1, 1]
    assert batch.pair_index.tolist() == [[1, 1, 3], [0, 2, 4]]  # (better, worse) sequence numbers
    assert collate_padded(rankings, PAD, ranking_pairs="best_vs_rest").pair_index.tolist() == [[1, 1, 3], [0, 2, 4]]
    with pytest.raises(TypeError, match="either pairs"):
        collate_padded([rankings[0], TokenizedPair([5], [6], [7])], PAD)


# --- the module: rankings to the ranking objective, their pairs to a pairwise one ----------------------------


def _module(loss: dict) -> DPOLitModule:
    torch.manual_seed(0)
    module = DPOLitModule(model=MODEL, loss=loss, optimizer=ADAMW)
    module.configure_model()
    with torch.no_grad():  # a policy away from its reference, so that losses and gradients are not trivial
        for parameter in module.policy.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return module


def _padded_rankings(model: torch.nn.Module, rankings: list[TokenizedRanking]) -> torch.Tensor:
    """[G, K] per-response log-probs from one padded row per response (K = the largest ranking; 0 pads)."""
    logps, _ = logprobs.sequence_logprobs(model, collate_padded(rankings, PAD))
    out, start = torch.zeros(len(rankings), max(len(r.response_ids) for r in rankings)), 0
    for g, ranking in enumerate(rankings):
        out[g, : len(ranking.response_ids)] = logps[start : start + len(ranking.response_ids)]
        start += len(ranking.response_ids)
    return out


def test_plackett_luce_training_step_equals_the_loss_on_padded_per_response_logprobs():
    module = _module(PLACKETT_LUCE)
    rankings = random_rankings(6, seed=1)
    loss = module.training_step(SHARED["packed"](rankings), 0)
    with torch.no_grad():
        policy = _padded_rankings(module.policy, rankings)
        reference = _padded_rankings(module.reference.model, rankings)
    ranks = torch.full(policy.shape, -1, dtype=torch.long)
    for g, ranking in enumerate(rankings):
        ranks[g, : len(ranking.ranks)] = torch.tensor(ranking.ranks)
    expected, _ = plackett_luce_loss(policy, reference, ranks, beta=0.1)
    torch.testing.assert_close(loss.detach(), expected.mean(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["all", "adjacent", "best_vs_rest"])
def test_pairwise_dpo_on_whole_rankings_equals_dpo_on_their_flattened_pairs(mode):
    """loss=dpo on ranked batches (each response computed once) gives the loss and gradients of DPO on the same
    rankings flattened into pairs (each response computed once per pair it is in)."""
    module = _module(DPO)
    rankings = random_rankings(6, seed=2)
    results = []
    for batch in (collate_packed(rankings, PAD, ranking_pairs=mode), collate_packed(flattened(rankings, mode), PAD)):
        module.policy.zero_grad()
        loss = module.training_step(batch, 0)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in module.policy.parameters()]))
    (whole_loss, whole_grads), (pairs_loss, pairs_grads) = results
    torch.testing.assert_close(whole_loss, pairs_loss, rtol=1e-5, atol=1e-7)
    for whole, pairs in zip(whole_grads, pairs_grads, strict=True):
        torch.testing.assert_close(whole, pairs, rtol=1e-4, atol=1e-6)


def test_plackett_luce_on_pairs_is_dpo():
    """A batch of pairs is a batch of rankings of two: loss=plackett_luce trains exactly as loss=dpo."""
    pairs = flattened(random_rankings(6, seed=4))
    batch = collate_packed(pairs, PAD)
    torch.testing.assert_close(
        _module(PLACKETT_LUCE).training_step(batch, 0), _module(DPO).training_step(batch, 0), rtol=1e-6, atol=1e-7
    )


def test_ranked_batches_log_ranking_metrics_next_to_the_pairwise_ones():
    module = _module(PLACKETT_LUCE)
    logged = {}
    module.log_dict = lambda values, **kwargs: logged.update(values)
    module.training_step(collate_padded(random_rankings(4, seed=5), PAD), 0)
    assert {"train/ranking/kendall_tau", "train/ranking/top1", "train/rewards/accuracies"} <= set(logged)
    placeholder = placeholder_batch(PAD, SHARED["packed"], ranked=True)
    assert placeholder.ranked and module.training_step(placeholder, 0) == 0


# --- data module and config ---------------------------------------------------------------------------------


def _write(path, rows) -> str:
    return str(write_jsonl(path, rows))


RANKED_ROWS = [
    {
        "prompt": f"Question {i}: which answer?",
        "responses": [f" yes {i}", f" no {i}", f" maybe {i}"],
        "scores": [i % 3, 2.5, 0.5],
    }
    for i in range(12)
]


def _datamodule(tmp_path, rows, *overrides):
    train = _write(tmp_path / "train.jsonl", rows)
    val = _write(tmp_path / "val.jsonl", RANKED_ROWS[:4])
    cfg = compose(
        "task=local",
        f"task.source.path={train}",
        f"task.source.val_path={val}",
        "task.source.responses_column=responses",
        "data.batch_size=4",
        *overrides,
        run_dir=tmp_path,
    )
    datamodule = build_datamodule(cfg, load_tokenizer(cfg.model))
    return cfg, datamodule


def test_ranked_files_make_ranked_batches_or_their_pairs(tmp_path):
    _, whole = _datamodule(tmp_path, RANKED_ROWS)
    whole.setup("fit")
    batch = next(iter(whole.train_dataloader()))
    assert batch.ranked and batch.num_pairs == 4 and batch.num_sequences == 12
    _, pairs = _datamodule(tmp_path, RANKED_ROWS, "data.rankings=pairs")
    pairs.setup("fit")
    # scores (i % 3, 2.5, 0.5): three different levels except where i % 3 ties nothing → 3 pairs a ranking
    assert pairs.report()["train"]["rows"] == 3 * len(RANKED_ROWS)
    assert not next(iter(pairs.train_dataloader())).ranked


@pytest.mark.parametrize(
    "row, problem",
    [
        ({"prompt": "p", "responses": [" a"], "scores": [1]}, "responses: "),  # the source's own words
        ({"prompt": "p", "responses": [" a", " b"], "scores": [1, "high"]}, "scores: score 1 is not a number"),
        ({"prompt": "p", "responses": [" a", " b"], "scores": [1, 2, 3]}, "scores: 3 scores for 2 responses"),
        ({"prompt": "p", "responses": [" a", " a"], "scores": [1, 2]}, "responses[1]: identical to responses[0]"),
        ({"prompt": "p", "responses": [" a", ""], "scores": [1, 2]}, "responses[1]: empty"),
    ],
)
@pytest.mark.parametrize("rankings", ["whole", "pairs"])
def test_a_bad_ranking_is_an_error_naming_file_row_and_field(tmp_path, row, problem, rankings):
    _, datamodule = _datamodule(tmp_path, [*RANKED_ROWS[:3], row], f"data.rankings={rankings}")
    with pytest.raises(DataError) as error:
        datamodule.setup("fit")
    assert str(error.value).startswith(f"{tmp_path / 'train.jsonl'}: row 3: {problem}")


def test_a_bad_ranking_is_skipped_and_counted_when_asked(tmp_path):
    bad = {"prompt": "p", "responses": [" a", " b"], "scores": [1, None]}
    _, datamodule = _datamodule(tmp_path, [*RANKED_ROWS[:3], bad], "task.skip_bad_rows=true")
    datamodule.setup("fit")
    report = datamodule.report()["train"]
    assert report["rows"] == 3 and sum(report["skipped"].values()) == 1


def test_length_grouping_measures_whole_rankings(tmp_path):
    _, datamodule = _datamodule(tmp_path, RANKED_ROWS, "data.group_by_length=true")
    datamodule.setup("fit")
    lengths = torch.as_tensor(datamodule.train_dataloader().sampler.order.lengths).tolist()
    examples = datamodule.pairs["train"].with_format(None)
    assert lengths == [len(r["prompt_ids"]) + sum(map(len, r["response_ids"])) for r in examples]


def test_streaming_rankings_give_the_map_style_batches(tmp_path):
    _, mapped = _datamodule(tmp_path, RANKED_ROWS, "data.layout=padded", "task.shuffle_buffer=0")
    _, streamed = _datamodule(
        tmp_path, RANKED_ROWS, "data.layout=padded", "task.streaming=true", "task.shuffle_buffer=0"
    )
    for datamodule in (mapped, streamed):
        datamodule.setup("fit")
    for expected, batch in zip(mapped.val_dataloader(), streamed.val_dataloader(), strict=True):
        assert torch.equal(batch.input_ids, expected.input_ids) and torch.equal(batch.ranks, expected.ranks)


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["loss=plackett_luce", "data.rankings=pairs"], "data.rankings"),
        (["loss=unlikelihood"], "data.rankings"),
    ],
)
def test_ranked_data_config_mistakes_fail_before_any_model_loads(tmp_path, overrides, key):
    cfg, _ = _datamodule(tmp_path, RANKED_ROWS, *overrides)
    with pytest.raises(ConfigError) as error:
        check_rankings(cfg, ranked_source=True)
    assert str(error.value).startswith(f"{key}: ")
    check_rankings(cfg, ranked_source=False)  # the same config on pair data is fine


@pytest.mark.parametrize("key, value", [("data.rankings", "both"), ("data.ranking_pairs", "some")])
def test_unknown_ranking_options_are_refused(tmp_path, key, value):
    from dpo_lightning.runtime.checks import validate_config

    with pytest.raises(ConfigError, match=f"^{key}: must be one of"):
        validate_config(compose(f"{key}={value}", run_dir=tmp_path))


def test_the_precomputed_reference_serves_whole_rankings(tmp_path):
    """reference=precomputed keys each response by its tokens, so ranked batches (and their flattened pairs, whose
    responses are the same sequences) look up the values the reference model computes."""
    import lightning as L

    from dpo_lightning.models.reference import FrozenCopy, Precomputed
    from dpo_lightning.models.reference_cache import precompute_reference

    overrides = [
        "reference=precomputed",
        f"reference.cache_dir={tmp_path / 'cache'}",
        "task.source.responses_per_prompt=3",
    ]
    overrides += ["task.source.num_train_pairs=16", "task.source.num_val_pairs=4", "data.eval_batch_size=8"]
    cfg = compose(*overrides, run_dir=tmp_path)
    datamodule = build_datamodule(cfg, load_tokenizer(cfg.model))
    trainer = L.Trainer(accelerator="cpu", logger=False, default_root_dir=tmp_path, enable_progress_bar=False)
    path = precompute_reference(cfg, datamodule, trainer)
    model = OmegaConf.to_container(cfg.model, resolve=True)
    modules = {}
    STRATEGIES = {"model": lambda cache_file: FrozenCopy(), "precomputed": Precomputed}
    for name in ("model", "precomputed"):
        modules[name] = DPOLitModule(
            model=model, loss=PLACKETT_LUCE, optimizer=ADAMW, reference=STRATEGIES[name](cache_file=str(path))
        )
        modules[name].configure_model()
    batch = next(iter(datamodule._loader("train", 8, shuffle=True)))
    assert batch.ranked and batch.num_sequences == 24
    losses = {name: module.training_step(batch, 0) for name, module in modules.items()}
    torch.testing.assert_close(losses["precomputed"], losses["model"], rtol=1e-5, atol=1e-6)


def test_plackett_luce_cannot_be_a_part_of_combo():
    from dpo_lightning.losses.combo import Combo
    from dpo_lightning.losses.dpo import DPO as DPOObjective
    from dpo_lightning.losses.plackett_luce import PlackettLuce

    with pytest.raises(ConfigError, match=r"^loss\.parts: plackett_luce takes whole rankings"):
        Combo([DPOObjective(beta=0.1), PlackettLuce(beta=0.1)], [1.0, 1.0])


@pytest.mark.parametrize("mode", ["all", "adjacent", "best_vs_rest"])
def test_validation_metrics_are_means_over_all_pairs_and_rankings_whatever_the_batches(mode):
    """Batches of rankings of 2 (1 pair each) and of 5 (up to 10 pairs each): val/rewards/accuracies is the accuracy
    over every label-ordered validation pair (the pairs the loss's rewards cover, whatever `data.ranking_pairs`
    lists), val/logps/chosen the mean over the listed pairs, val/ranking/top1 the share over every ranking,
    val/ranking/kendall_tau the mean over the rankings where τ is defined, val/loss the mean over every ranking."""
    from types import SimpleNamespace

    module = _module(PLACKETT_LUCE)
    module._trainer = SimpleNamespace(strategy=SimpleNamespace(reduce=lambda totals, reduce_op: totals))
    logged = {}
    module.log_dict = lambda values, **kwargs: logged.update({k: float(v) for k, v in values.items()})
    rankings = [random_rankings(6, seed=11, max_k=2), [r for r in random_rankings(40, seed=12) if len(r.ranks) == 5]]
    same = [dataclasses.replace(r, response_ids=[r.response_ids[0]] * 5) for r in rankings[1][:2]]  # τ undefined
    rankings[1] += same
    module.on_validation_epoch_start()
    for batch in rankings:  # padded: identical responses get bit-identical log-probs, so their rewards tie exactly
        module.validation_step(collate_padded(batch, PAD, ranking_pairs=mode), 0)
    module.on_validation_epoch_end()

    correct, pairs, top1, losses, chosen_logps, taus = 0, 0, [], [], [], []
    with torch.no_grad():
        for batch in rankings:
            policy = _padded_rankings(module.policy, batch)
            reference = _padded_rankings(module.reference.model, batch)
            for g, ranking in enumerate(batch):
                rewards = (policy[g] - reference[g])[: len(ranking.ranks)]
                for better, worse in ranking_pairs(ranking.ranks, "all"):
                    correct, pairs = correct + int(rewards[better] > rewards[worse]), pairs + 1
                chosen_logps += [float(policy[g, better]) for better, _ in ranking_pairs(ranking.ranks, mode)]
                top = [i for i, reward in enumerate(rewards.tolist()) if reward == rewards.max()]
                top1.append(sum(ranking.ranks[i] == 0 for i in top) / len(top))  # ties at the top: the chance of a hit
                tau = scipy.stats.kendalltau(rewards.tolist(), [-rank for rank in ranking.ranks]).statistic
                taus += [] if math.isnan(tau) else [tau]
            ranks = torch.full(policy.shape, -1, dtype=torch.long)
            for g, ranking in enumerate(batch):
                ranks[g, : len(ranking.ranks)] = torch.tensor(ranking.ranks)
            losses += plackett_luce_loss(policy, reference, ranks, beta=0.1)[0].tolist()
    assert logged["val/rewards/accuracies"] == pytest.approx(correct / pairs, abs=1e-6)
    assert logged["val/logps/chosen"] == pytest.approx(sum(chosen_logps) / len(chosen_logps), rel=1e-5)
    assert logged["val/ranking/top1"] == pytest.approx(sum(top1) / len(top1), abs=1e-6)
    assert 0 < len(taus) < len(top1)  # τ undefined in some rankings: its mean is over the others
    assert logged["val/ranking/kendall_tau"] == pytest.approx(sum(taus) / len(taus), abs=1e-5)
    assert logged["val/loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-5)


@pytest.mark.parametrize("ties", ["efron", "breslow"])
def test_plackett_luce_logs_the_rewards_of_the_label_ordered_pairs(ties):
    """train/rewards/* of a whole-ranking batch with ties and padding: means over every label-ordered pair of the
    rankings (tied responses never pair), by a loop over `ranking_pairs` on the padded per-response log-probs."""
    module = _module({**PLACKETT_LUCE, "ties": ties})
    logged = {}
    module.log_dict = lambda values, **kwargs: logged.update({k: float(v) for k, v in values.items()})
    rankings = random_rankings(8, seed=13)
    assert any(len(set(r.ranks)) < len(r.ranks) for r in rankings)  # some ties
    module.training_step(SHARED["packed"](rankings), 0)
    with torch.no_grad():
        rewards = 0.1 * (_padded_rankings(module.policy, rankings) - _padded_rankings(module.reference.model, rankings))
    pairs = [
        (float(rewards[g, better]), float(rewards[g, worse]))
        for g, ranking in enumerate(rankings)
        for better, worse in ranking_pairs(ranking.ranks, "all")
    ]
    expected = {
        "chosen": sum(c for c, _ in pairs) / len(pairs),
        "rejected": sum(r for _, r in pairs) / len(pairs),
        "margins": sum(c - r for c, r in pairs) / len(pairs),
        "accuracies": sum(c > r for c, r in pairs) / len(pairs),
    }
    for name, value in expected.items():
        assert logged[f"train/rewards/{name}"] == pytest.approx(value, rel=1e-4, abs=1e-6), name
