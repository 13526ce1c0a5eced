"""Policy-gradient losses: REINFORCE (lessons 01 and 04).

Every loss returns a scalar to MINIMIZE: the negative of the surrogate objective whose gradient is
the policy gradient.
"""
from __future__ import annotations

import torch

from ..checks import check_tensor
from ..masks import masked_mean


def reinforce_loss(
    logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """REINFORCE surrogate: -mean(A * log pi(a)) over the counted entries.

    The gradient of this loss is minus the log-derivative-trick estimate of grad E[R]:
    -(1/N) sum_i A_i grad log pi(a_i).

    logprobs:   (B,) log pi(a_i) of sampled actions, or (B, T) per-token log-probs.
    advantages: same shape as `logprobs`, or (B,) per sequence (broadcast over T). Treated as
                constants: they are detached here, so a baseline that depends on the parameters
                cannot leak gradient.
    mask:       None, or (B, T) with 1 on tokens that count. The mean is over all counted tokens
                in the batch (a "token-level" mean; lesson 13 compares the other normalizers).
    """
    check_tensor(logprobs, "logprobs", floating=True)
    check_tensor(advantages, "advantages", floating=True)
    if logprobs.ndim not in (1, 2):
        raise ValueError(f"logprobs must be (B,) or (B, T), got shape {tuple(logprobs.shape)}")
    if advantages.shape != logprobs.shape:
        if logprobs.ndim == 2 and advantages.shape == logprobs.shape[:1]:
            advantages = advantages[:, None].expand_as(logprobs)
        else:
            raise ValueError(
                f"advantages must have shape {tuple(logprobs.shape)} (or (B,) = "
                f"{tuple(logprobs.shape[:1])} per sequence), got {tuple(advantages.shape)}"
            )
    if mask is not None and logprobs.ndim == 1 and mask.shape != logprobs.shape:
        raise ValueError(f"mask must have shape {tuple(logprobs.shape)}, got {tuple(mask.shape)}")
    return -masked_mean(advantages.detach() * logprobs, mask)
