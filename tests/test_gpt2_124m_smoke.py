"""Smoke runs at full size and of the benchmark script.

GPT-2 124M (GPT2Config() defaults, random weights, nothing downloaded) goes once through the same
minirl.lm functions the tiny lessons use: a batched generation from left-padded prompts, a
teacher-forced log-prob pass, and one AdamW step. The time and peak memory are printed and
recorded as pytest properties (visible in --junitxml reports without -s).
"""
import resource
import time

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from minirl import bench, lm


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports kB


def test_gpt2_124m_generate_logprobs_and_one_adamw_step(record_property):
    t0 = time.perf_counter()
    torch.manual_seed(0)
    cfg = GPT2Config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # 12 layers, 768 wide, 50257 tokens
    model = GPT2LMHeadModel(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    assert 124e6 < n_params < 125e6  # GPT-2 small: 124.4M with the tied embedding counted once
    eos = pad = cfg.eos_token_id  # GPT-2's convention: <|endoftext|> (50256) ends and pads
    t_build = time.perf_counter() - t0

    ids, mask = lm.left_pad([[464, 3290, 373, 845], [40, 588]], pad)  # two short prompts of GPT-2 token ids
    g = torch.Generator().manual_seed(0)
    out = lm.generate(model, ids, mask, 8, eos, pad, temperature=1.0, top_k=50, generator=g)
    assert out.sequences.shape == (2, 4 + 8) and out.response_mask.shape == (2, 8)
    t_gen = time.perf_counter() - t0 - t_build

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    lp, ent = lm.response_logprobs(model, out.sequences, out.attention_mask, out.prompt_length,
                                   return_entropy=True)
    assert bool(torch.isfinite(lp).all()) and bool((lp <= 0).all())
    m = out.response_mask.bool()
    assert bool((out.logprobs[m] >= lp[m] - 1e-4).all())  # top-k renormalisation only raises log-probs
    assert 0 < float(ent[m].mean().detach()) <= float(torch.log(torch.tensor(50257.0)))
    loss = -lm.sequence_sum(lp, out.response_mask).mean()  # masked NLL of the sampled responses
    opt.zero_grad()
    loss.backward()
    before = model.transformer.h[0].attn.c_attn.weight.detach().clone()
    opt.step()
    assert not torch.equal(before, model.transformer.h[0].attn.c_attn.weight)
    with torch.no_grad():
        lp_after = lm.response_logprobs(model, out.sequences, out.attention_mask, out.prompt_length)
    gain = float(lm.sequence_sum(lp_after, out.response_mask).mean() + loss.detach())
    assert gain > 0  # one step on the NLL of these responses makes them more likely
    total = time.perf_counter() - t0
    rss = peak_rss_mib()

    report = dict(build_s=round(t_build, 1), generate_s=round(t_gen, 1), total_s=round(total, 1),
                  peak_rss_mib=round(rss), params=n_params)
    for key, value in report.items():
        record_property(key, value)
    print(f"\nGPT-2 124M smoke: build {t_build:.1f} s, generate 2 x 8 tokens {t_gen:.1f} s, "
          f"total {total:.1f} s, peak RSS {rss:.0f} MiB (process-wide)")


def test_bench_quick_runs(capsys, record_property):
    tiny = bench.Case("minuscule", bench.MINUSCULE, batch=2, prompt_len=4, new_tokens=3, repeats=1,
                      warmup=0, rollout=(4, 3))
    rows = bench.main(["--device", "cpu"], cases=[tiny])
    text = capsys.readouterr().out
    whats = [r["what"] for r in rows]
    assert whats == ["generate, KV cache", "generate, no cache", "log-prob pass (no grad)",
                     "train step (fwd+bwd+AdamW)", "rollout 4 x 3 tokens, KV cache"]
    assert all(r["seconds"] > 0 and r["tokens_per_s"] > 0 for r in rows)
    assert "| model | params | measurement" in text and "device: cpu" in text and "KV cache makes" in text
    assert text.count("| minuscule |") == 5
    record_property("bench_quick_rows", len(rows))


def test_bench_quick_cli_cases():
    cases = bench.default_cases(quick=True)
    assert [c.name for c in cases] == ["minuscule"] and cases[0].config == bench.MINUSCULE
    full = bench.default_cases(quick=False)
    assert full[-1].name == "gpt2-124M" and len(bench.default_cases(quick=False, skip_124m=True)) == 1


@pytest.mark.parametrize("argv", [["--bogus"]])
def test_bench_rejects_unknown_flags(argv):
    with pytest.raises(SystemExit):
        bench.main(argv, cases=[])
