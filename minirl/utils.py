"""Seeding, device selection and quiet progress bars: the conventions every lesson uses."""
from __future__ import annotations

import os
import random
import sys
import time
from contextlib import contextmanager

import numpy as np
import torch


def seed_everything(seed: int = 0) -> torch.Generator:
    """Seed Python, NumPy and torch, and return a fresh `torch.Generator` seeded with `seed`.

    Lessons pass the returned generator to every random draw they make themselves
    (`torch.randn(..., generator=g)`), so a cell's randomness does not depend on what ran before.

    If `OMP_NUM_THREADS` is set, torch is given exactly that many threads (torch otherwise caps it at
    the number of cores), so the CI can check that a lesson's outputs do not depend on it.
    """
    threads = os.environ.get("OMP_NUM_THREADS", "").strip()
    if threads.isdigit() and int(threads) > 0 and torch.get_num_threads() != int(threads):
        torch.set_num_threads(int(threads))
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def get_device(prefer: str | None = None) -> torch.device:
    """The device to run on: `prefer` if given, else CUDA if available, else CPU.

    CPU lessons call `get_device("cpu")` so that their printed numbers match the committed outputs.
    """
    if prefer is not None:
        return torch.device(prefer)
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def progress(iterable=None, **kwargs):
    """A `tqdm` progress bar that stays out of checked notebook outputs.

    Bars are shown only when stderr is a terminal (scripts run by hand) or when the environment
    variable `MINIRL_PROGRESS=1` asks for them. In Jupyter and under nbval they are off, because
    nbval compares stderr and a bar's timings differ on every run.
    """
    from tqdm.auto import tqdm

    show = os.environ.get("MINIRL_PROGRESS") == "1" or (
        hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    )
    kwargs.setdefault("disable", not show)
    return tqdm(iterable, **kwargs)


@contextmanager
def timer(results: dict | None = None, key: str = "seconds"):
    """Measure wall time of a block: `with timer(d, "gen"): ...` adds the seconds to `d["gen"]`.

    Where CUDA is in use, the GPU is synchronized at both ends, so the seconds are those of the
    block's kernels rather than of their asynchronous launches (a no-op on CPU)."""
    _cuda_sync()
    t0 = time.perf_counter()
    out = {} if results is None else results
    try:
        yield out
    finally:
        _cuda_sync()
        out[key] = out.get(key, 0.0) + time.perf_counter() - t0


def _cuda_sync():
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def config_dict(config) -> dict:
    """A dataclass config (PPOConfig, DPOConfig, RewardModelConfig, ...) as a plain dict, for logs
    and for saving next to a checkpoint. Re-exported by the modules that define those configs."""
    import dataclasses

    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise ValueError(f"config_dict expects a dataclass instance, got {type(config).__name__}")
    return dataclasses.asdict(config)


def weights_fingerprint(model, n_probes: int = 6, seed: int = 0) -> list[float]:
    """2 + n_probes numbers that move with every weight of `model`: the sum and the norm of all
    its parameters, and their dot products with n_probes fixed random +-1 vectors (seeded). Two
    runs whose fingerprints agree to 1e-6 trained the same weights (lesson 03 checks its training
    against a recorded run with it; the recorded runs in data/results/ store one)."""
    w = torch.cat([p.detach().flatten() for p in model.parameters()])
    signs = torch.randint(0, 2, (n_probes, w.numel()), generator=torch.Generator().manual_seed(seed))
    return [w.sum().item(), w.norm().item()] + ((2 * signs - 1).to(w.dtype) @ w).tolist()
