"""Batch × causal LM → per-sequence summed response log-probs, in fp32, for any batch layout.

    hidden  = decoder(input_ids, decoder_mask(attention_mask), position_ids)   [R, T, H]   model dtype
    h       = hidden[target_rows, target_positions]                  [N, H]      response positions only
    logits  = lm_head(h[chunk])                                      [C, V]      one chunk at a time
    logp    = logits.float().gather(target) − logits.float().logsumexp()   [C]  fp32
    sums    = zeros(S).index_add(target_seqs, logp)                  [S]         S sequences (2P for P pairs)

The LM head runs only where a response token is predicted (never on prompt or padding positions), and the
fp32 log-softmax is taken chunk by chunk, so at most one fp32 copy of the response logits exists (autograd
keeps each chunk's fp32 logits for backward) and never a full `[batch, seq, vocab]` one. The naive path
(`lean=False`, `model.lean_logprobs: false`) is what TRL and the reference implementation do — the head at every
position, a full [R, T, V] fp32 log-softmax, then a gather — kept so that benchmarks can measure the difference.

A 4-D-mask batch (prefix-shared, packed) is only correct for a model that passed `layout_support`'s probe; the
callers (`DPOLitModule`, the reference pre-computation) go through `layout_support.batch_for`.
"""

from __future__ import annotations

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask
from transformers import PreTrainedModel

from dpo_lightning.data.collate import Batch

# Config attributes of models whose logits are not just `lm_head(hidden)` (scaling or soft-capping in the
# CausalLM forward); computing log-probs from the head alone would be wrong for them.
_LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def check_supported(model: PreTrainedModel) -> None:
    """Raise if `sequence_logprobs` cannot reproduce this model's logits from decoder + head."""
    for attribute in _LOGIT_POSTPROCESSING:
        if getattr(model.config, attribute, None) not in (None, 1.0):
            raise NotImplementedError(
                f"{type(model).__name__} post-processes its logits ({attribute}); not supported yet"
            )


def decoder_mask(model: PreTrainedModel, attention_mask: torch.Tensor) -> torch.Tensor | BlockMask:
    """The batch's attention mask in the form the model's attention kernel reads.

    transformers hands a 4-D mask to the kernel unchanged. SDPA reads a boolean one (True = attend), but
    eager attention adds the mask to the scores (`scores + mask`): a boolean mask would add 1 or 0 and mask
    nothing. So a 4-D boolean mask [R, 1, T, T] stays boolean for `sdpa`, becomes a FlexAttention `BlockMask`
    for `flex_attention` (blocks with nothing to attend are skipped: a packed row's pairs cost no cross-pair
    work), and becomes additive for every other kernel: 0 where it is True, the most negative value of the
    model's dtype elsewhere. A 2-D mask passes as it is (transformers builds the causal mask itself).
    """
    kernel = getattr(model.config, "_attn_implementation", None)
    if attention_mask.dim() == 2 or kernel == "sdpa":
        return attention_mask
    if kernel == "flex_attention":
        rows, _, length, _ = attention_mask.shape

        def attends(row: torch.Tensor, head: torch.Tensor, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
            return attention_mask[row, 0, query, key]

        return create_block_mask(attends, B=rows, H=None, Q_LEN=length, KV_LEN=length, device=attention_mask.device)
    dtype = model.get_input_embeddings().weight.dtype
    additive = torch.zeros(attention_mask.shape, dtype=dtype, device=attention_mask.device)
    return additive.masked_fill(~attention_mask, torch.finfo(dtype).min)  # [R, 1, T, T]


def token_logprobs(model: PreTrainedModel, batch: Batch, chunk_size: int = 2048, lean: bool = True) -> torch.Tensor:
    """Log-probs of the batch's N response tokens.

    Args:
        model: a Hugging Face causal LM (decoder reachable with `get_decoder()`, head with
            `get_output_embeddings()`).
        batch: any layout produced by `dpo_lightning.data.collate`.
        chunk_size: response tokens per LM-head chunk; bounds the fp32 logits alive at once to
            `chunk_size × vocab`.
        lean: the head at response positions only, in chunks (default); False: the naive path, the head at
            all R × T positions and one [R, T, V] fp32 log-softmax (same values, more time and memory).

    Returns:
        token_logps: [N] fp32 log p(token | prefix), in the order of `batch.target_ids`.
    """
    hidden = decoder_hidden(model, batch)  # [R, T, H]
    head = model.get_output_embeddings()
    if not lean:
        logps = head(hidden).float().log_softmax(-1)  # [R, T, V] fp32
        return logps[batch.target_rows, batch.target_positions, batch.target_ids]  # [N] fp32
    return response_logprobs(head, hidden[batch.target_rows, batch.target_positions], batch.target_ids, chunk_size)


def decoder_hidden(model: PreTrainedModel, batch: Batch) -> torch.Tensor:
    """[R, T, H] the decoder's last hidden states of the batch's rows (any layout)."""
    return model.get_decoder()(
        input_ids=batch.input_ids,
        attention_mask=decoder_mask(model, batch.attention_mask),
        position_ids=batch.position_ids,
        use_cache=False,
    ).last_hidden_state


def response_logprobs(
    head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, chunk_size: int = 2048
) -> torch.Tensor:
    """[N] fp32 log p(target) from the [N, H] hidden states that predict the N targets, the head run `chunk_size`
    positions at a time (at most one fp32 [chunk, V] logits block alive)."""
    return torch.cat(
        [
            _token_logps(head, hidden[start : start + chunk_size], targets[start : start + chunk_size])
            for start in range(0, hidden.shape[0], chunk_size)
        ]
    )  # [N] fp32


def sum_per_sequence(token_logps: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """[N] token log-probs → [S] summed log-probs per sequence and [S] token counts."""
    num_sequences = batch.num_sequences
    logps = torch.zeros(num_sequences, dtype=torch.float32, device=token_logps.device)
    logps = logps.index_add(0, batch.target_seqs, token_logps)  # [S]
    num_tokens = torch.bincount(batch.target_seqs, minlength=num_sequences)  # [S]
    return logps, num_tokens


def sequence_logprobs(
    model: PreTrainedModel, batch: Batch, chunk_size: int = 2048, lean: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs of the batch's S response sequences: [S] fp32 sums and [S] token counts."""
    return sum_per_sequence(token_logprobs(model, batch, chunk_size, lean), batch)


def _token_logps(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) for C positions: hidden [C, H], targets [C] → [C] fp32."""
    logits = head(hidden).float()  # [C, V] fp32
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
