"""The shipped checkpoints (written by notebooks/03_tiny_lm.ipynb, in float64) load offline and
reproduce their recorded greedy samples, through both transformers' generate and minirl.lm.generate."""
import json

import pytest
import torch

from minirl import lm, models
from minirl import tokenizer as T
from minirl.paths import DATA_DIR

CHECKPOINTS = [models.TINY_PRETRAINED_DIR, models.TINY_SFT_DIR]


@pytest.fixture(autouse=True)
def offline(monkeypatch, float64_default):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize("path", CHECKPOINTS, ids=lambda p: p.name)
def test_checkpoint_loads_offline_and_reproduces_samples(path):
    from transformers import AutoModelForCausalLM

    assert (path / "config.json").exists(), f"{path.name} missing: run notebooks/03_tiny_lm.ipynb"
    model, tok = models.load_policy(path)  # AutoModelForCausalLM/AutoTokenizer.from_pretrained(local dir)
    assert tok.get_vocab() == T.load_tokenizer().get_vocab()
    assert (model.config.n_layer, model.config.n_embd, model.config.vocab_size) == (2, 96, len(tok))
    with models.quiet_transformers():
        direct = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in model.parameters())  # follows the default dtype
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), direct.parameters()))
    samples = json.loads((path / models.SAMPLES_FILE).read_text())
    assert len(samples) >= 4
    for s in samples:
        ids = torch.tensor([tok(s["prompt"], add_special_tokens=False)["input_ids"]])
        mask = torch.ones_like(ids)
        ours = lm.generate(model, ids, mask, 48, tok.eos_token_id, tok.pad_token_id, temperature=0)
        text = tok.decode(ours.response_ids[0][ours.response_mask[0].bool()], skip_special_tokens=True)
        assert text == s["response"], (s["prompt"], text, s["response"])
        hf = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=48, do_sample=False,
                            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        assert tok.decode(hf[0, ids.shape[1]:], skip_special_tokens=True) == s["response"]


def test_sft_checkpoint_follows_the_format():
    model, tok = models.load_policy(models.TINY_SFT_DIR)
    samples = {s["prompt"]: s["response"] for s in json.loads((models.TINY_SFT_DIR / models.SAMPLES_FILE).read_text())}
    from minirl import rewards

    arith = [r for p, r in samples.items() if p.startswith("Q:")]
    assert arith and all(rewards.format_reward(r) == 1.0 for r in arith)


def test_shipped_weights_are_float64():
    from safetensors.torch import load_file

    for path in CHECKPOINTS:
        assert all(t.dtype == torch.float64 for t in load_file(str(path / "model.safetensors")).values())


def test_load_policy_dtype_follows_the_default_or_the_argument():
    model, _ = models.load_policy(models.TINY_SFT_DIR, dtype=torch.float32)
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_data_folder_is_small():
    total = sum(f.stat().st_size for f in DATA_DIR.rglob("*") if f.is_file())
    assert total < 30 * 2**20, f"data/ holds {total / 2**20:.1f} MiB, keep it under 30"
