"""The training step every loop shares: token-weighted gradient accumulation, gradient clipping,
optional autocast, device placement from the model; checkpoints that resume bit for bit; a JSONL
run log that appends on resume.

    optimizer_step(model, opt, micro_batches, loss_fn, weights=...)   one optimizer step -> stats
    split_batch(batch, size)                         a dict/tuple/tensor batch -> micro-batches
    to_device(obj, device)                           tensors inside dicts/lists/tuples moved
    model_device(model), autocast_dtype_for(device)  where the model lives; bf16 on CUDA, None on CPU
    save_checkpoint(path, model, opt, ...)           model + optimizer + scheduler + RNG states + step
    load_checkpoint(path, model, opt, ...)           restores all of it, returns {"step", "extra"}
    append_jsonl(path, row), start_run_log(path, resume_step=None)   the run log
    run_loop(step_fn, n_steps, log_path=..., ...)    the outer loop of every train_*: log, stop row,
                                                     callback, early stop

Gradient accumulation. A batch split into micro-batches i = 1..k, with `loss_fn(model, mb_i)`
returning the MEAN loss over that micro-batch's units (tokens, sequences, pairs) and `weights[i]`
= its number of units n_i, backpropagates loss_i * n_i / sum_j n_j. The accumulated gradient is
then the gradient of sum_i n_i loss_i / N = the mean over all N units of the full batch, whatever
the sizes of the micro-batches (tests/test_training.py checks it to 1e-10 in float64). With
weights=None every micro-batch counts equally (the mean of the micro-batch means), which equals
the full-batch mean only when every micro-batch holds as many units.

Resume. `save_checkpoint` stores the model, the optimizer, the scheduler, Python's, NumPy's and
torch's global RNG states (and CUDA's where available), the state of an explicit
torch.Generator, a step counter and any plain `extra`. A loop that saves after step k, is stopped,
then rebuilt and `load_checkpoint`-ed continues with bitwise the same parameters and log as one
that never stopped (tests/test_training.py). Nothing here launches processes: on CPU everything
runs in the notebook's own process; multi-GPU wrappers (accelerate) can call the same functions.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

__all__ = [
    "optimizer_step",
    "split_batch",
    "to_device",
    "model_device",
    "autocast_dtype_for",
    "save_checkpoint",
    "load_checkpoint",
    "append_jsonl",
    "start_run_log",
    "run_loop",
]

CHECKPOINT_VERSION = 1


# ------------------------------------------------------------------ devices


def model_device(model) -> torch.device:
    """The device of the model's first parameter (or buffer); CPU for a model with neither."""
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def autocast_dtype_for(device) -> torch.dtype | None:
    """The autocast dtype the course uses on `device`: torch.bfloat16 on CUDA, None (no autocast,
    full precision) on CPU and elsewhere. Pass the result as `optimizer_step(autocast_dtype=...)`."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else None


def to_device(obj, device):
    """`obj` with every tensor inside it (nested dicts, lists, tuples) moved to `device`; other
    values unchanged. A tensor already there is returned as is (no copy)."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(to_device(v, device) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def split_batch(batch, size: int) -> list:
    """Cut a batch along dim 0 into micro-batches of `size` rows (the last may be smaller).

    `batch` is a tensor, or a dict / tuple / list of tensors sharing their first dimension
    (non-tensor values of a dict are passed to every micro-batch unchanged)."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")

    def rows(x):
        if isinstance(x, torch.Tensor):
            if x.ndim == 0:
                raise ValueError("split_batch needs tensors with a batch dimension, got a 0-d tensor")
            return x.shape[0]
        if isinstance(x, dict):
            ns = {rows(v) for v in x.values() if isinstance(v, (torch.Tensor, dict, list, tuple))}
        elif isinstance(x, (list, tuple)):
            ns = {rows(v) for v in x}
        else:
            raise ValueError(f"split_batch takes tensors, dicts, lists or tuples, got {type(x).__name__}")
        if len(ns) != 1:
            raise ValueError(f"every tensor of the batch must have the same first dimension, got sizes {sorted(ns)}")
        return ns.pop()

    def cut(x, a, b):
        if isinstance(x, torch.Tensor):
            return x[a:b]
        if isinstance(x, dict):
            return {k: cut(v, a, b) if isinstance(v, (torch.Tensor, dict, list, tuple)) else v for k, v in x.items()}
        return type(x)(cut(v, a, b) for v in x)

    n = rows(batch)
    return [cut(batch, a, min(a + size, n)) for a in range(0, n, size)]


# ----------------------------------------------------------- optimizer step


def _params(optimizer) -> list:
    return [p for group in optimizer.param_groups for p in group["params"]]


def _check_weights(weights, k: int) -> list[float]:
    if weights is None:
        return [1.0] * k
    if isinstance(weights, torch.Tensor):
        weights = weights.detach().flatten().tolist()
    weights = list(weights)
    if len(weights) != k:
        raise ValueError(f"weights must hold one number per micro-batch ({k}), got {len(weights)}")
    out = []
    for w in weights:
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ValueError(f"weights must be finite numbers >= 0 (units per micro-batch), got {w!r}")
        out.append(float(w))
    if sum(out) <= 0:
        raise ValueError(f"weights must not all be 0, got {out}")
    return out


def optimizer_step(model, optimizer, micro_batches, loss_fn: Callable, *, weights=None,
                   max_grad_norm: float | None = None, scheduler=None, autocast_dtype: torch.dtype | None = None,
                   move_to_device: bool = True) -> dict:
    """One optimizer step over `micro_batches` with token-weighted gradient accumulation.

    model           the module trained (its device is where the micro-batches are moved)
    optimizer       a torch optimizer; the gradient norm and clipping cover its parameters
    micro_batches   a non-empty list of micro-batches (anything `loss_fn` takes; the tensors inside
                    dicts/lists/tuples are moved to the model's device unless move_to_device=False)
    loss_fn         loss_fn(model, micro_batch) -> (loss, stats): loss a 0-d floating tensor, the
                    MEAN over the micro-batch's units; stats a dict of numbers (or 0-d tensors)
    weights         units per micro-batch (e.g. real tokens), len k, >= 0, not all 0; None: 1 each.
                    Each loss_i is backpropagated as loss_i * w_i / sum(w), so the accumulated
                    gradient is the full-batch unit-weighted mean's gradient
    max_grad_norm   clip the global gradient norm to this (None: no clipping; the norm is still
                    measured)
    scheduler       stepped once after the optimizer step
    autocast_dtype  None: no autocast (the model's own dtype, the CPU lessons' float64);
                    e.g. torch.bfloat16: forward passes under torch.autocast on the model's device
                    (`autocast_dtype_for(device)` gives bf16 on CUDA and None on CPU)

    Returns floats {"loss": sum_i w_i loss_i / sum(w), "grad_norm": norm before clipping, "lr":
    the first param group's lr used by this step, **stats} where each stat is the same weighted
    mean over the micro-batches (a key missing from a micro-batch is averaged over those that
    have it). Raises FloatingPointError on a non-finite loss (before any parameter changes).
    """
    if isinstance(micro_batches, (str, bytes)) or not isinstance(micro_batches, (list, tuple)):
        raise ValueError(f"micro_batches must be a non-empty list of micro-batches, got {type(micro_batches).__name__}")
    k = len(micro_batches)
    if k == 0:
        raise ValueError("micro_batches must be a non-empty list of micro-batches, got an empty one")
    if not callable(loss_fn):
        raise ValueError(f"loss_fn must be callable as loss_fn(model, micro_batch), got {type(loss_fn).__name__}")
    if max_grad_norm is not None and not (isinstance(max_grad_norm, (int, float)) and max_grad_norm > 0):
        raise ValueError(f"max_grad_norm must be a positive number or None, got {max_grad_norm!r}")
    if autocast_dtype is not None and not isinstance(autocast_dtype, torch.dtype):
        raise ValueError(f"autocast_dtype must be a torch.dtype or None, got {autocast_dtype!r}")
    w = _check_weights(weights, k)
    total = sum(w)
    params = _params(optimizer)
    device = model_device(model)

    def autocast():
        if autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=autocast_dtype)

    optimizer.zero_grad(set_to_none=True)
    loss_sum, stat_sums, stat_w = 0.0, {}, {}
    for i, mb in enumerate(micro_batches):
        if move_to_device:
            mb = to_device(mb, device)
        with autocast():
            out = loss_fn(model, mb)
        if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict)):
            raise ValueError("loss_fn must return (loss, stats): a 0-d tensor and a dict, "
                             f"got {type(out).__name__}")
        loss, stats = out
        if not isinstance(loss, torch.Tensor) or loss.ndim != 0 or not loss.is_floating_point():
            raise ValueError(f"loss_fn's loss must be a 0-d floating-point tensor, got "
                             f"{type(loss).__name__}{tuple(loss.shape) if isinstance(loss, torch.Tensor) else ''}")
        value = float(loss.detach())
        if not math.isfinite(value):
            optimizer.zero_grad(set_to_none=True)
            raise FloatingPointError(f"loss of micro-batch {i} is {value}: step skipped (expected a finite loss)")
        if w[i] > 0:
            (loss * (w[i] / total)).backward()
        loss_sum += w[i] * value
        for key, v in stats.items():
            stat_sums[key] = stat_sums.get(key, 0.0) + w[i] * float(v.detach() if isinstance(v, torch.Tensor) else v)
            stat_w[key] = stat_w.get(key, 0.0) + w[i]
    grads = [p.grad for p in params if p.grad is not None]
    if max_grad_norm is not None:
        grad_norm = torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], max_grad_norm)
    elif grads:
        grad_norm = torch.nn.utils.get_total_norm(grads)
    else:
        grad_norm = torch.zeros(())
    lr = float(optimizer.param_groups[0]["lr"])
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    out = {"loss": loss_sum / total, "grad_norm": float(grad_norm), "lr": lr}
    for key, s in stat_sums.items():
        if key not in out:
            out[key] = s / stat_w[key] if stat_w[key] > 0 else float("nan")
    return out


# -------------------------------------------------------------- checkpoints


def _rng_states(generator: torch.Generator | None) -> dict:
    np_state = np.random.get_state()
    states = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None,
        "generator": generator.get_state() if generator is not None else None,
    }
    return states


def _set_rng_states(states: dict, generator: torch.Generator | None) -> None:
    random.setstate(_tuplify(states["python"]))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if states.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    if generator is not None:
        if states.get("generator") is None:
            raise ValueError("load_checkpoint got a generator but the checkpoint holds no generator state")
        generator.set_state(states["generator"])


def _tuplify(x):
    return tuple(_tuplify(v) for v in x) if isinstance(x, (list, tuple)) else x


def save_checkpoint(path, model, optimizer=None, scheduler=None, *, step: int, generator: torch.Generator | None = None,
                    extra: dict | None = None) -> Path:
    """Write one file holding the model's state_dict, the optimizer's and the scheduler's
    state_dicts (when given), the Python / NumPy / torch (/ CUDA) global RNG states, the state of
    `generator` (when given), `step` (int >= 0, e.g. the number of steps done) and `extra` (a
    dict of plain values: numbers, strings, lists, dicts, tensors). The file is written to a
    temporary name and renamed, so a crash never leaves half a checkpoint. Returns the path."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be an int >= 0, got {step!r}")
    if extra is not None and not isinstance(extra, dict):
        raise ValueError(f"extra must be a dict or None, got {type(extra).__name__}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "version": CHECKPOINT_VERSION,
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": _rng_states(generator),
        "extra": extra,
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path, model, optimizer=None, scheduler=None, *, generator: torch.Generator | None = None,
                    restore_rng: bool = True) -> dict:
    """Restore what `save_checkpoint` wrote into `model` (tensors go to the model's device), the
    optimizer and the scheduler (when given), the global RNG states (unless restore_rng=False)
    and `generator` (when given; the checkpoint must hold a generator state). Returns
    {"step": int, "extra": dict or None}. A checkpoint saved without an optimizer (or scheduler)
    cannot restore one: ValueError."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no checkpoint at {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path} is not a minirl.training checkpoint (version {CHECKPOINT_VERSION})")
    model.load_state_dict(state["model"])
    for name, obj in (("optimizer", optimizer), ("scheduler", scheduler)):
        if obj is not None:
            if state[name] is None:
                raise ValueError(f"the checkpoint at {path} holds no {name} state")
            obj.load_state_dict(state[name])
    if restore_rng:
        _set_rng_states(state["rng"], generator)
    elif generator is not None:
        generator.set_state(state["rng"]["generator"])
    return {"step": state["step"], "extra": state["extra"]}


# ------------------------------------------------------------------ run log


def append_jsonl(path, row: dict) -> None:
    """Append one JSON line to `path` (parent folders created) and flush it to disk."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def start_run_log(path, resume_step: int | None = None, key: str = "step") -> list[dict]:
    """Prepare the JSONL run log at `path` for a run and return the rows it keeps.

    resume_step None: a fresh run, the file is emptied (created if missing). resume_step = k (a
    run resumed from a checkpoint saved after k steps): the leading rows with row[key] < k are
    kept and everything after them is dropped (rows of steps that ran after the checkpoint and
    will run again), so that appending the resumed run's rows gives the log of a run that never
    stopped."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if resume_step is None:
        path.write_text("")
        return []
    if isinstance(resume_step, bool) or not isinstance(resume_step, int) or resume_step < 0:
        raise ValueError(f"resume_step must be an int >= 0 or None, got {resume_step!r}")
    lines = path.read_text().splitlines() if path.exists() else []
    kept, kept_lines = [], []
    for line in lines:
        if not line.strip():
            continue
        row = json.loads(line)
        if not (isinstance(row.get(key), int) and row[key] < resume_step):
            break
        kept.append(row)
        kept_lines.append(line)
    path.write_text("".join(line + "\n" for line in kept_lines))
    return kept


# --------------------------------------------------------------- the outer loop


def run_loop(step_fn: Callable[[int], dict], n_steps: int, *, log_path=None, resume_step: int | None = None,
             first_index: int = 0, key: str = "iteration", callback: Callable[[dict], None] | None = None,
             stop: Callable[[dict], bool] | None = None) -> list[dict]:
    """The outer loop every `train_*` shares, so that each algorithm file keeps only its step.

    For i = 0 .. n_steps - 1: row = step_fn(i); the row is appended to the JSONL `log_path` as soon
    as it exists; then callback(row); then the loop ends early if stop(row) is true. The log is
    prepared by `start_run_log(log_path, resume_step, key)`: resume_step None empties it (a fresh
    run), resume_step = k keeps the rows of the k steps already done (a resumed run). If step_fn
    raises FloatingPointError or ValueError (a NaN reward or loss, a KL above its threshold, bad
    input found mid-run), a row {key: first_index + i, "stopped": message} is appended to the log
    and the error is re-raised. Returns the rows of this call."""
    if not callable(step_fn):
        raise ValueError(f"step_fn must be callable as step_fn(i) -> row, got {type(step_fn).__name__}")
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 0:
        raise ValueError(f"n_steps must be an int >= 0, got {n_steps!r}")
    if log_path is not None:
        start_run_log(log_path, resume_step, key=key)
    rows = []
    for i in range(n_steps):
        try:
            row = step_fn(i)
        except (FloatingPointError, ValueError) as e:
            if log_path is not None:
                append_jsonl(log_path, {key: first_index + i, "stopped": str(e)})
            raise
        rows.append(row)
        if log_path is not None:
            append_jsonl(log_path, row)
        if callback is not None:
            callback(row)
        if stop is not None and stop(row):
            break
    return rows
