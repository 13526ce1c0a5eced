"""Supervised losses: the masked negative log-likelihood used for pretraining and SFT (lesson 03).

Pretraining maximizes log P(x) = sum_t log P(x_t | x_<t) over every token of a document; SFT
maximizes log P(y | x) = sum_t log P(y_t | x, y_<t) over the RESPONSE tokens only. Both are the
same function of per-token log-probs with a different mask.
"""
from __future__ import annotations

import torch

from ..checks import as_float_mask, check_tensor
from ..masks import masked_mean, masked_sum


def sft_loss(logprobs: torch.Tensor, mask: torch.Tensor, normalize: str = "token") -> torch.Tensor:
    """Masked negative log-likelihood, a scalar to minimize.

    logprobs: (B, T) per-token log-probs aligned as minirl.lm.sequence_logprobs returns them
              (entry t = log P(token t | tokens < t)).
    mask:     (B, T), 1 on the tokens whose likelihood counts: every real token after the first for
              pretraining, the response tokens (EOS included) for SFT. Entries of `logprobs` outside
              the mask are ignored whatever their value.
    normalize: "token"    -> -sum(mask * logprobs) / sum(mask): every counted token weighs the same
                            (what transformers' `labels=` loss and TRL's SFT loss compute);
               "sequence" -> mean over rows of each row's mean NLL: every sequence weighs the same,
                            so tokens of short responses weigh more;
               "sum"      -> mean over rows of each row's summed NLL, -mean_i log pi(y_i | x_i):
                            longer responses weigh more (the sequence log-prob of DPO's losses).
    """
    check_tensor(logprobs, "logprobs", ndim=2, floating=True)
    m = as_float_mask(mask, logprobs)
    if normalize == "token":
        return -masked_mean(logprobs, m)
    if normalize == "sequence":
        if bool((m.sum(-1) == 0).any()):
            raise ValueError("normalize='sequence' needs at least one counted token in every row")
        return -(masked_mean(logprobs, m, dim=1)).mean()
    if normalize == "sum":
        return -(masked_sum(logprobs, m, dim=1)).mean()
    raise ValueError(f"normalize must be 'token', 'sequence' or 'sum', got {normalize!r}")
