"""Input checks shared by every public function: bad input raises a `ValueError` that says what
was expected and what was received, instead of broadcasting into a silently wrong number."""
from __future__ import annotations

import math

import torch


def check_tensor(x, name: str, *, ndim: int | None = None, floating: bool = False) -> torch.Tensor:
    """`x` must be a torch tensor (with `ndim` dimensions, and floating point if asked)."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {tuple(x.shape)}")
    if floating and not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    return x


def check_same_shape(**tensors: torch.Tensor) -> None:
    """All named tensors must share one shape: `check_same_shape(logprobs=a, mask=m)`."""
    items = list(tensors.items())
    for name, t in items:
        check_tensor(t, name)
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.shape != first.shape:
            raise ValueError(
                f"{name} must have the same shape as {first_name} {tuple(first.shape)}, "
                f"got {tuple(t.shape)}"
            )


def as_float_mask(mask: torch.Tensor, like: torch.Tensor, name: str = "mask") -> torch.Tensor:
    """A mask (bool or 0/1 numbers) of `like`'s shape, returned in `like`'s float dtype."""
    check_tensor(mask, name)
    if mask.shape != like.shape:
        raise ValueError(f"{name} must have shape {tuple(like.shape)}, got {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        bad = (mask != 0) & (mask != 1)
        if bool(bad.any()):
            raise ValueError(f"{name} must hold only 0/1 (or True/False) values")
    return mask.to(like.dtype)


def check_probability_vector(p: torch.Tensor, name: str = "probs", atol: float = 1e-5) -> torch.Tensor:
    """Non-negative entries that sum to one over the last dimension."""
    check_tensor(p, name, floating=True)
    if p.ndim == 0 or p.shape[-1] == 0:
        raise ValueError(f"{name} must have a non-empty last dimension, got shape {tuple(p.shape)}")
    if bool((p < 0).any()) or not bool(torch.isfinite(p).all()):
        raise ValueError(f"{name} must hold finite, non-negative probabilities")
    s = p.sum(-1)
    if not torch.allclose(s, torch.ones_like(s), atol=atol):
        raise ValueError(f"{name} must sum to 1 over its last dimension, got sums {s.flatten()[:4].tolist()}")
    return p


def check_finite(value, name: str, threshold: float | None = None) -> None:
    """Stop a training loop on a NaN/inf statistic, or one whose magnitude passes `threshold`."""
    v = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
    if not math.isfinite(v):
        raise FloatingPointError(f"{name} is {v}: training stopped (expected a finite value)")
    if threshold is not None and abs(v) > threshold:
        raise FloatingPointError(
            f"{name} = {v:.4g} exceeds its threshold {threshold:.4g}: training stopped"
        )


def check_prompts(prompts, name: str = "prompts") -> None:
    """`prompts` must be a non-empty list (or tuple) of non-empty strings.

    A bare string is rejected explicitly: iterating over it would silently train on its characters.
    """
    if isinstance(prompts, str):
        raise ValueError(f"{name} must be a list of str, got one str ({prompts[:30]!r}); wrap it: [{name[:-1]}]")
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError(f"{name} must be a non-empty list of str, got {type(prompts).__name__}")
    if not all(isinstance(p, str) and p for p in prompts):
        raise ValueError(f"every entry of {name} must be a non-empty str")


def check_positive(value, name: str) -> None:
    """A hyperparameter that must be > 0 (beta, tau, lam, lr...)."""
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def check_batch_1d(**tensors: torch.Tensor) -> int:
    """Named (B,) floating tensors, non-empty, all of one shape (one entry per example: the
    preference losses' inputs). Returns B."""
    items = list(tensors.items())
    for name, t in items:
        check_tensor(t, name, ndim=1, floating=True)
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.shape != first.shape:
            raise ValueError(
                f"{name} must have the same shape as {first_name} {tuple(first.shape)} "
                f"(one entry per example), got {tuple(t.shape)}"
            )
    if first.numel() == 0:
        raise ValueError(f"{first_name} is empty: a loss needs at least one example")
    return first.numel()


def check_like(x, name: str, like: torch.Tensor, mask: torch.Tensor, *, what: str | None = None,
               same_dtype: bool = False) -> torch.Tensor:
    """A floating tensor of `like`'s shape (and dtype, with same_dtype), finite wherever `mask`
    (a float mask of that shape) is > 0; padding may hold anything. `what` names `like` in the
    message ("the shape of logprobs (B, T)"); None says only the shape. Returns `x`. Used by the
    token-level losses (policy gradient, PPO, GRPO) for every (B, T) input."""
    check_tensor(x, name, floating=True)
    if x.shape != like.shape:
        where = f"the shape of {what} " if what else "shape "
        raise ValueError(f"{name} must have {where}{tuple(like.shape)}, got {tuple(x.shape)}")
    if same_dtype and x.dtype != like.dtype:
        raise ValueError(f"{name} must have the dtype of {what or 'its reference'} ({like.dtype}), got {x.dtype}")
    if not bool(torch.isfinite(torch.where(mask > 0, x, torch.zeros_like(x))).all()):
        raise ValueError(f"{name} must be finite on the masked-in entries, got NaN or inf")
    return x


def check_int(value, name: str, minimum: int = 1) -> None:
    """An int (not a bool) >= minimum: counts of steps, batch sizes, epochs."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def check_rows(rows, keys, name: str = "rows") -> list:
    """A non-empty list (or datasets.Dataset) of dicts holding `keys`; returns it as a list.

    A columnar dict {"prompt": [...], ...} (HF's `Dataset.to_dict()` layout) or a bare str is
    rejected with a message that says what was expected."""
    if isinstance(rows, (str, bytes)):
        raise ValueError(f"{name} must be a list of row dicts with keys {list(keys)}, got a str")
    if isinstance(rows, dict):
        raise ValueError(f"{name} must be a list of row dicts (or a datasets.Dataset) with keys {list(keys)}, "
                         f"got one dict of columns {sorted(rows)[:4]}; use a list of rows")
    try:
        rows = list(rows)
    except TypeError:
        raise ValueError(f"{name} must be a list of row dicts with keys {list(keys)}, "
                         f"got {type(rows).__name__}") from None
    if not rows:
        raise ValueError(f"{name} is empty: need at least one row")
    if not isinstance(rows[0], dict):
        raise ValueError(f"{name} must be a list of row dicts with keys {list(keys)}, "
                         f"got a list of {type(rows[0]).__name__}")
    missing = [k for k in keys if k not in rows[0]]
    if missing:
        raise ValueError(f"{name} need keys {', '.join(keys)}; missing {missing}")
    return rows
