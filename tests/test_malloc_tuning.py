"""minirl raises glibc's malloc thresholds at import (minirl._tune_glibc_malloc): a speed setting
that must not change a single bit of any result."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import minirl

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import hashlib, torch
import minirl
from minirl import lm
from minirl.models import tiny_gpt2_config
from transformers import GPT2LMHeadModel
torch.manual_seed(0)
torch.set_default_dtype(torch.float64)
model = GPT2LMHeadModel(tiny_gpt2_config(vocab_size=64, n_positions=64)).eval()
ids = torch.randint(0, 64, (96, 48)); mask = torch.ones_like(ids); mask[::3, :7] = 0
lp = lm.sequence_logprobs(model, ids, mask)
lp.sum().backward()
g = torch.cat([p.grad.flatten() for p in model.parameters()])
print(minirl.MALLOC_TUNED, hashlib.sha256(lp.detach().numpy().tobytes() + g.numpy().tobytes()).hexdigest())
"""


def _run(tuning: str) -> list[str]:
    env = dict(os.environ, MINIRL_MALLOC_TUNING=tuning, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", SCRIPT], check=False, cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc setting, Linux only")
def test_malloc_tuning_changes_no_bit():
    tuned, untuned = _run("1"), _run("0")
    assert untuned[0] == "False"
    assert tuned[0] == str(minirl.MALLOC_TUNED)
    assert tuned[1] == untuned[1]  # log-probs and gradients, bit for bit
