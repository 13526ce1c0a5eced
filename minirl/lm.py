"""Sequences and language models as policies: per-token log-probs, entropy, generation.

Derived in notebooks/03 (teacher-forced log-probs) and notebooks/04 (the LM as a policy).
Works for any `transformers` causal LM (the tiny GPT-2 and GPT-2 124M alike), with left- or
right-padded batches.
"""
from __future__ import annotations

import torch

from .checks import check_tensor


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that count only real tokens: left padding must not shift the first real token
    away from position 0. (B, T) -> (B, T), 0 on padding."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.clamp(min=0)


def _check_ids_and_mask(input_ids, attention_mask):
    check_tensor(input_ids, "input_ids", ndim=2)
    if input_ids.dtype.is_floating_point:
        raise ValueError(f"input_ids must be integer token ids, got dtype {input_ids.dtype}")
    check_tensor(attention_mask, "attention_mask")
    if attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, "
            f"got {tuple(attention_mask.shape)}"
        )


def sequence_logprobs(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    temperature: float = 1.0,
    return_entropy: bool = False,
):
    """Per-token log-probabilities of the given tokens under `model` (teacher forcing).

    input_ids, attention_mask: (B, T), attention_mask 1 on real tokens, 0 on padding (either side).
    Returns logprobs (B, T) with logprobs[:, t] = log pi(input_ids[:, t] | input_ids[:, :t]) for
    t >= 1; entry 0 (no prefix) and padded positions are 0. Logits are divided by `temperature`
    so that the result matches the distribution a sampler at that temperature drew from.
    With `return_entropy`, also returns the entropy (B, T) of the predictive distribution for the
    token at t (same alignment, 0 where logprobs is 0).
    """
    _check_ids_and_mask(input_ids, attention_mask)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
    )
    logits = out.logits[:, :-1].float() / temperature  # (B, T-1, V) predicts tokens 1..T-1
    logp_all = torch.log_softmax(logits, dim=-1)
    targets = input_ids[:, 1:].unsqueeze(-1)  # (B, T-1, 1)
    lp = logp_all.gather(-1, targets).squeeze(-1)  # (B, T-1)
    valid = (attention_mask[:, 1:] * attention_mask[:, :-1]).to(lp.dtype)
    zero = torch.zeros_like(lp[:, :1])
    logprobs = torch.cat([zero, lp * valid], dim=1)  # (B, T)
    if not return_entropy:
        return logprobs
    ent = -(logp_all.exp() * logp_all).sum(-1) * valid  # (B, T-1)
    return logprobs, torch.cat([zero, ent], dim=1)
