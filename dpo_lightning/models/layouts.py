"""Which models compute correct log-probs from the 4-D-mask layouts (prefix-shared, packed), and the fallback.

Those layouts give the decoder a 4-D boolean mask [R, 1, T, T] and position ids that restart at every pair and
at every rejected response. That is only right if the model lets both through to its attention unchanged:
transformers passes a 4-D mask straight to the attention kernel, and `logprobs.decoder_mask` puts it in the
kernel's form (boolean for SDPA, a block mask for flex attention, additive 0 / dtype-min for eager — a boolean
mask added to eager scores masks nothing, which is why GPT-J, eager only, first looked incompatible). Other
kernels (flash-attention, which takes no dense mask), remote code, or a model that ignores `position_ids` may not; nor
can sliding-window attention (the 4-D mask replaces the window; the probe's short rows could not tell), which is
refused from the config.

So before a model sees such a batch, `layout_problem` runs a probe once per (decoder class, attention
kernel, dtype, sliding window), without gradients and in eval mode:

    (a) one row, a causal forward with the usual 2-D mask  vs  the same with an explicit 4-D causal mask
    (b) per-token log-probs of two pairs: padded layout  vs  prefix-shared  vs  packed (both pairs in one row)

and calls the model unfit if any relative error ‖x − x_ref‖ / ‖x_ref‖ exceeds 1e-4 (fp32/fp64 compute) or 2e-2
(fp16/bf16 weights or autocast), or if a forward raises. `batch_for` then rebuilds each such batch in the padded
layout (`collate.to_padded`) — same values, more compute — after one logged notice naming the model and why.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from lightning.pytorch.utilities import rank_zero_only
from transformers import PreTrainedModel

from dpo_lightning.data.collate import (
    Batch,
    collate_packed,
    collate_padded,
    collate_prefix_shared,
    to_padded,
)
from dpo_lightning.data.tokenize import TokenizedPair
from dpo_lightning.models.logprobs import decoder_mask, token_logprobs

log = logging.getLogger(__name__)

EXACT_TOLERANCE = 1e-4  # relative error allowed when the probe computes in fp32 or fp64
HALF_TOLERANCE = 2e-2  # … in fp16 or bf16 (weights or autocast); a broken mask is off by far more
_PROBED: dict[tuple, str | None] = {}  # (kind, body class, kernel, dtype, window) → problem (None: fit)


def batch_for(model: PreTrainedModel, batch: Batch) -> Batch:
    """`batch` as `model` can take it: unchanged if it is padded or the model passed the probe, else rebuilt in
    the padded layout."""
    if not batch.shares_prompts or layout_problem(model) is None:
        return batch
    return to_padded(batch)


def layout_problem(model: PreTrainedModel) -> str | None:
    """Why `model` cannot take the 4-D-mask layouts (None: it can); probed once per decoder class, attention
    kernel, dtype and sliding window, and logged (rank 0) the first time it fails."""
    return probed("causal LM", model.get_decoder(), model, _probe)


def probed(
    kind: str, body: torch.nn.Module, model: PreTrainedModel, probe: Callable[[PreTrainedModel], str | None]
) -> str | None:
    """`probe(model)`'s verdict, run once per (kind, `body` class, attention kernel, dtype, sliding window) and
    logged (rank 0) the first time it finds a problem: the batches are then rebuilt in the padded layout."""
    kernel = getattr(model.config, "_attn_implementation", None)
    window = getattr(model.config, "sliding_window", None)
    key = (kind, type(body).__name__, kernel, model.get_input_embeddings().weight.dtype, window)
    if key not in _PROBED:
        _PROBED[key] = probe(model)
        if _PROBED[key] is not None and rank_zero_only.rank == 0:
            log.warning(
                "%s (attn_implementation=%s) cannot take the prefix-shared or packed layouts: %s; "
                "its batches are rebuilt in the padded layout (same results, slower)",
                key[1],
                kernel,
                _PROBED[key],
            )
    return _PROBED[key]


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float((value.double() - reference.double()).norm() / reference.double().norm().clamp(min=1e-12))


def probe_tolerance(model: PreTrainedModel, device: torch.device) -> float:
    dtype = model.get_input_embeddings().weight.dtype
    half = dtype in (torch.float16, torch.bfloat16) or torch.is_autocast_enabled(device.type)
    return HALF_TOLERANCE if half else EXACT_TOLERANCE


def probe_pairs(vocab_size: int) -> list[TokenizedPair]:
    """Two small pairs of fixed, varied token ids (prompts of 3 and 2 tokens, responses of 1 to 3)."""
    ids = [(7 * i + 3) % vocab_size for i in range(14)]
    return [TokenizedPair(ids[0:3], ids[3:5], ids[5:8]), TokenizedPair(ids[8:10], ids[10:13], ids[13:14])]


@torch.no_grad()
def _probe(model: PreTrainedModel) -> str | None:
    """Run checks (a) and (b) of the module docstring; the first failure as a phrase, or None."""
    window = getattr(model.config, "sliding_window", None)
    if window is not None and getattr(model.config, "use_sliding_window", True):
        return f"sliding-window attention ({window} tokens), which a 4-D mask would replace"
    device = model.get_input_embeddings().weight.device
    tolerance = probe_tolerance(model, device)
    pairs = probe_pairs(model.get_input_embeddings().num_embeddings)
    training = model.training
    model.eval()
    try:
        ids = torch.tensor([[token for pair in pairs for token in pair.prompt_ids + pair.chosen_ids]], device=device)
        width = ids.shape[1]
        positions = torch.arange(width, device=device)[None]  # [1, T]
        causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()[None, None]  # [1, 1, T, T]
        hidden = [
            model.get_decoder()(
                input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False
            ).last_hidden_state
            for mask in (torch.ones_like(ids), decoder_mask(model, causal))
        ]
        error = relative_error(hidden[1], hidden[0])
        if not error <= tolerance:
            return f"an explicit 4-D causal mask changes its hidden states (relative error {error:.2g})"
        reference = token_logprobs(model, collate_padded(pairs, 0).to(device))
        for name, batch in (
            ("prefix-shared", collate_prefix_shared(pairs, 0)),
            ("packed", collate_packed(pairs, 0, max_tokens=64)),
        ):
            error = relative_error(token_logprobs(model, batch.to(device)), reference)
            if not error <= tolerance:
                return f"{name} log-probs differ from the padded layout's (relative error {error:.2g})"
        return None
    except Exception as failure:  # any kernel or model that rejects these inputs
        return f"a probe forward failed ({type(failure).__name__}: {str(failure).splitlines()[0][:200]})"
    finally:
        model.train(training)
