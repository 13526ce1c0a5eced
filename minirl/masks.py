"""Masked reductions. A mask is 1.0 (or True) on tokens that count and 0 on padding."""
from __future__ import annotations

import torch

from .checks import as_float_mask, check_tensor


def masked_sum(x: torch.Tensor, mask: torch.Tensor | None = None, dim=None) -> torch.Tensor:
    """Sum of `x` where `mask` is 1 (over `dim`, or everything if `dim` is None).

    Padding cannot leak in: entries where the mask is 0 are replaced by 0 before the sum, so a NaN or
    inf sitting on padding (a log-prob of a PAD token, say) gives neither a NaN sum nor a NaN gradient.
    """
    check_tensor(x, "x")
    if mask is None:
        return x.sum() if dim is None else x.sum(dim)
    m = as_float_mask(mask, x)
    xm = torch.where(m != 0, x * m, torch.zeros((), dtype=x.dtype, device=x.device))
    return xm.sum() if dim is None else xm.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None = None, dim=None) -> torch.Tensor:
    """Mean of `x` over the entries where `mask` is 1. An all-zero mask is an error, not a NaN."""
    if mask is None:
        return x.mean() if dim is None else x.mean(dim)
    m = as_float_mask(mask, x)
    count = m.sum() if dim is None else m.sum(dim)
    if bool((count == 0).any()):
        raise ValueError("masked_mean got a mask with no 1s (over the reduced dimension): nothing to average")
    return masked_sum(x, m, dim) / count


def masked_var(x: torch.Tensor, mask: torch.Tensor | None = None, unbiased: bool = True) -> torch.Tensor:
    """Variance of `x` over the masked-in entries (Bessel-corrected if `unbiased`)."""
    if mask is None:
        return x.var(unbiased=unbiased)
    m = as_float_mask(mask, x)
    mean = masked_mean(x, m)
    n = m.sum()
    var = masked_sum((x - mean) ** 2, m) / n
    if unbiased:
        if n < 2:
            raise ValueError("masked_var(unbiased=True) needs at least two masked-in entries")
        var = var * n / (n - 1)
    return var
