"""Batch × sequence classifier (a reward model) → one fp32 reward per response sequence, for any batch layout.

    batch   = reward_batch_for(model, batch)                     the padded layout if the body fails the probe
    rows, columns = score_positions(batch, eos_token_id)         [S], [S]   where each sequence is scored
    hidden  = base_model(input_ids, decoder_mask(attention_mask), position_ids)     [R, T, H]
    rewards = score(hidden[rows, columns]).float()               [S] fp32

The model is a Hugging Face `AutoModelForSequenceClassification` with one label: a decoder body
(`model.base_model`) and a linear `score` head. Its own forward pools the head's output at the last non-padding
token of each row, which only the padded layout allows; here the head runs at the S score positions only, so a
prefix-shared or packed batch computes each prompt once, as the policy's log-probs do (`logprobs.py`).

The score position: the exported reward model is used on text — `eval.classifier.ClassifierScorer(folder,
positive_label=None)` scores `prompt_text + response_text` with the logit at its last non-padding token — so
training reads the reward where that forward will. For prompt x (p tokens) and a response of n tokens y_0 … y_{n−1}
(`data/tokenize.py`: encoded without special tokens, EOS appended unless the response was truncated):

    training sequence   x_0 … x_{p−1} y_0 … y_{n−1} EOS     position ids 0 … p+n    (p + n + 1 tokens)
    scored text         x_0 … x_{p−1} y_0 … y_{n−1}         position ids 0 … p+n−1  (p + n tokens: data text
                                                            never encodes to EOS, `split_special_tokens`)
    score position      the token y_{n−1}, position id p + n − 1, the last token before the appended EOS
                        (x_{p−1}, position p − 1, for a response that is EOS alone: the text of an empty response)

That is the hidden state that predicts EOS: in every layout, the column of the sequence's last target
(`target_positions[last]`, whose `target_ids[last]` is EOS). A truncated response (its last target is not EOS)
is scored at its own last token, y_{n−1} at position p + n − 1 too: the column after the one that predicts it
(`target_positions[last] + 1`). That column holds y_{n−1} in the padded layout, and in the 4-D-mask layouts
whenever n ≥ 2 (a branch's tokens are contiguous). A truncated one-token response in a 4-D-mask layout is
predicted from the prompt's last column, and the column after it holds the first token of the block's first
branch: the same hidden state exactly when that token is y_0 (it sees the prompt and itself, at position p); if
it is not, the batch is rebuilt in the padded layout (`to_padded`).

Two things the position cannot fix, which make text scores differ from training rewards:
- special tokens the scorer's tokenizer adds (`add_special_tokens=True`): a tokenizer that prepends BOS (Llama,
  Gemma) gives [BOS] x y, every position one later, where training saw x y. The tiny tokenizer adds none; the
  trainer's `export` warns when a tokenizer does.
- encoding x and y apart vs. x + y together: equal when the tokenizer splits where the texts meet (the tiny
  byte-level BPE, before a response that starts with a space), not when a merge crosses the boundary.
"""

from __future__ import annotations

import logging

import torch
from transformers import PreTrainedModel

from dpo_lightning.data.collate import Batch, collate_packed, collate_padded, collate_prefix_shared, to_padded
from dpo_lightning.models.layouts import probe_pairs, probe_tolerance, probed, relative_error
from dpo_lightning.models.logprobs import decoder_mask

log = logging.getLogger(__name__)


def score_head(model: PreTrainedModel) -> torch.nn.Module:
    """The classifier's head (`score`, transformers' name in every decoder `…ForSequenceClassification`)."""
    head = getattr(model, "score", None)
    if not isinstance(head, torch.nn.Module):
        raise NotImplementedError(f"{type(model).__name__} has no `score` head: not a decoder sequence classifier")
    return head


def score_positions(batch: Batch, eos_token_id: int) -> tuple[Batch, torch.Tensor, torch.Tensor]:
    """Where each of the batch's S sequences is scored (module docstring): (the batch, rebuilt in the padded
    layout if a score position is not in it, [S] rows, [S] columns).

    Raises:
        ValueError: a response without tokens (the tokenizer never makes one: each holds at least its EOS).
    """
    counts = torch.bincount(batch.target_seqs, minlength=batch.num_sequences)  # [S]
    last = counts.cumsum(0) - 1  # [S] each sequence's last target: targets come sequence by sequence
    rows, columns = batch.target_rows[last], batch.target_positions[last]  # [S], [S]
    ends = batch.target_ids[last] == eos_token_id  # [S] not truncated: scored where EOS is predicted
    after = (columns + 1).clamp(max=batch.input_ids.shape[1] - 1)  # [S] a truncated response's last token
    holds_last = (batch.input_ids[rows, after] == batch.target_ids[last]) & (
        batch.position_ids[rows, after] == batch.position_ids[rows, columns] + 1
    )  # [S]
    scored = (counts > 0) & (ends | holds_last)  # [S]
    if not bool(scored.all()):  # one host sync a step
        if not bool((counts > 0).all()):
            raise ValueError("a response with no tokens has no score position (responses hold at least their EOS)")
        if not batch.shares_prompts:
            raise AssertionError("a padded row always holds its response's last token")  # pragma: no cover
        return score_positions(to_padded(batch), eos_token_id)
    return batch, rows, torch.where(ends, columns, after)


def sequence_rewards(model: PreTrainedModel, batch: Batch, eos_token_id: int) -> torch.Tensor:
    """Rewards of the batch's S response sequences.

    Args:
        model: a one-label Hugging Face sequence classifier (`base_model` body, `score` head).
        batch: any layout produced by `dpo_lightning.data.collate`.
        eos_token_id: the EOS the tokenizer appended to each response (`data/tokenize.py`).

    Returns:
        rewards: [S] fp32, as the model's own forward gives them for `prompt + response` without the EOS.
    """
    batch, rows, columns = score_positions(reward_batch_for(model, batch), eos_token_id)
    hidden = model.base_model(
        input_ids=batch.input_ids,
        attention_mask=decoder_mask(model, batch.attention_mask),
        position_ids=batch.position_ids,
        use_cache=False,
    ).last_hidden_state  # [R, T, H]
    return score_head(model)(hidden[rows, columns]).float().squeeze(-1)  # [S]


def reward_batch_for(model: PreTrainedModel, batch: Batch) -> Batch:
    """`batch` as the classifier's body can take it: unchanged if it is padded or the body passed the probe, else
    rebuilt in the padded layout (`layouts.batch_for`'s rule, for a body without an LM head)."""
    if not batch.shares_prompts or reward_layout_problem(model) is None:
        return batch
    return to_padded(batch)


def reward_layout_problem(model: PreTrainedModel) -> str | None:
    """Why the classifier's body cannot take the 4-D-mask layouts (None: it can); probed once per body class,
    attention kernel, dtype and sliding window, logged (rank 0) the first time it fails.

    The probe, without gradients and in eval mode: the body's hidden states at every response-predicting position
    of two pairs, padded layout vs. prefix-shared vs. packed, must agree within `layouts`' tolerances (relative
    error 1e-4 in fp32, 2e-2 in fp16/bf16); a sliding window is refused from the config (a 4-D mask replaces it).
    """
    return probed("sequence classifier", model.base_model, model, _probe)


@torch.no_grad()
def _probe(model: PreTrainedModel) -> str | None:
    window = getattr(model.config, "sliding_window", None)
    if window is not None and getattr(model.config, "use_sliding_window", True):
        return f"sliding-window attention ({window} tokens), which a 4-D mask would replace"
    weights = model.get_input_embeddings().weight
    tolerance = probe_tolerance(model, weights.device)
    pairs = probe_pairs(weights.shape[0])

    def states(batch: Batch) -> torch.Tensor:  # [N, H] float64
        batch = batch.to(weights.device)
        mask = decoder_mask(model, batch.attention_mask)
        out = model.base_model(
            input_ids=batch.input_ids, attention_mask=mask, position_ids=batch.position_ids, use_cache=False
        )
        return out.last_hidden_state[batch.target_rows, batch.target_positions].double()

    training = model.training
    model.eval()
    try:
        reference = states(collate_padded(pairs, 0))
        for name, batch in (("prefix-shared", collate_prefix_shared(pairs, 0)), ("packed", collate_packed(pairs, 0))):
            error = relative_error(states(batch), reference)
            if not error <= tolerance:
                return f"{name} hidden states differ from the padded layout's (relative error {error:.2g})"
        return None
    except Exception as failure:  # any kernel or model that rejects these inputs
        return f"a probe forward failed ({type(failure).__name__}: {str(failure).splitlines()[0][:200]})"
    finally:
        model.train(training)
