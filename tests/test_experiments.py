"""minirl.experiments: every entry point runs at --preset tiny and writes the log schema lesson 17
reads; a resumed run is bitwise the unbroken one; micro-batching does not change the update;
the hub-offline failure of --preset gpt2 is fast and says what to pass; FLOPs, MFU, memory
arithmetic and the reduction of metrics over processes against exact cases."""
import json
import os
import time

import pytest
import torch
from transformers import GPT2Config

from minirl import models
from minirl.experiments import common, gpt2_rlvr, gpt2_sentiment, methods

VOLATILE = ("time_", "tokens_per_s", "update_tokens_per_s", "peak_memory", "mfu")


def run_tiny(tmp_path, name, method="grpo", task="sentiment", *extra):
    argv = ["--preset", "tiny", "--method", method, "--steps", "2", "--eval-prompts", "4", "--out-dir",
            str(tmp_path / name), "--no-progress", *extra]
    main = gpt2_sentiment.main if task == "sentiment" else gpt2_rlvr.main
    return main(argv)


def stable(rows):
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in rows]


def params(result):
    model = methods._checkpoint_model(result["state"])
    return {k: v.clone() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------ entry points


@pytest.mark.parametrize("method", common.METHODS_SENTIMENT)
def test_sentiment_entry_point_runs_and_logs_the_schema(tmp_path, method, capsys):
    before = torch.get_default_dtype()
    res = run_tiny(tmp_path, method, method)
    assert torch.get_default_dtype() == before  # the float64 of the tiny preset does not leak
    out = tmp_path / method
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert rows == res["rows"] and [r["step"] for r in rows] == [0, 1]
    for r in rows:
        assert set(common.LOG_KEYS) <= set(r), set(common.LOG_KEYS) - set(r)
        assert r["mfu"] is None  # CPU without --peak-tflops: n/a
        assert r["generated_tokens"] > 0 and r["time_step"] >= r["time_generate"] > 0
        assert (r["update_flops"] > 0) == (method != "best_of_n")
    ev = json.loads((out / "eval.json").read_text())
    assert ev["n"] == 4 and {"reward", "reward_sem", "kl", "kl_sem"} <= set(ev)
    assert json.loads((out / "config.json").read_text())["method"] == method
    assert (out / "checkpoint.pt").exists()
    assert "update MFU n/a" in capsys.readouterr().out


def test_rlvr_entry_point_runs(tmp_path):
    res = run_tiny(tmp_path, "rlvr", "rloo", "rlvr")
    assert len(res["rows"]) == 2 and 0 <= res["eval"]["reward"] <= 1
    assert res["rows"][0]["samples"] == 4 * 8  # 4 prompts x G = 8


def test_peak_tflops_gives_an_mfu(tmp_path):
    res = run_tiny(tmp_path, "mfu", "grpo", "sentiment", "--peak-tflops", "1.0", "--steps", "1", "--eval-prompts", "0")
    r = res["rows"][0]
    assert r["mfu"] == pytest.approx(r["update_flops"] / (r["time_update"] * 1e12))
    assert res["eval"] is None


@pytest.mark.parametrize("method", ["ppo", "dpo"])
def test_resume_gives_the_unbroken_run(tmp_path, method):
    a = run_tiny(tmp_path, "a", method, "sentiment", "--steps", "4", "--checkpoint-every", "2")
    run_tiny(tmp_path, "b", method, "sentiment", "--steps", "2", "--checkpoint-every", "2")
    b = run_tiny(tmp_path, "b", method, "sentiment", "--steps", "4", "--checkpoint-every", "2", "--resume")
    log_b = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log_b] == [0, 1, 2, 3]
    assert stable(log_b) == stable(a["rows"])  # bitwise the same numbers, times aside
    pa, pb = params(a), params(b)
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert a["eval"] == b["eval"]


def test_micro_batches_do_not_change_the_update(tmp_path):
    # token-weighted accumulation: micro-batches of 1 and of the whole batch give the same step
    one = run_tiny(tmp_path, "mb1", "grpo", "sentiment", "--steps", "1", "--micro-batch-size", "1",
                   "--eval-prompts", "0")
    full = run_tiny(tmp_path, "mb16", "grpo", "sentiment", "--steps", "1", "--micro-batch-size", "16",
                    "--eval-prompts", "0")
    p1, p2 = params(one), params(full)
    assert max(float((p1[k] - p2[k]).abs().max()) for k in p1) < 1e-10
    assert one["rows"][0]["loss"] == pytest.approx(full["rows"][0]["loss"], abs=1e-12)


def test_gpt2_preset_fails_fast_offline_with_a_message(tmp_path, monkeypatch):
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache("gpt2", "config.json"), str):
        pytest.skip("gpt2 is in the local cache: the offline failure cannot be provoked")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(SystemExit) as e:
        gpt2_sentiment.main(["--preset", "gpt2", "--method", "ppo", "--out-dir", str(tmp_path / "g")])
    assert time.perf_counter() - t0 < 10
    msg = str(e.value)
    assert "--model /path/to/gpt2" in msg and "--reward" in msg and "--dataset" in msg and "--preset tiny" in msg


def test_bad_flags_are_rejected(capsys):
    with pytest.raises(SystemExit):
        common.parse_config(["--steps", "0"])
    assert "steps must be an int >= 1" in capsys.readouterr().err
    with pytest.raises(ValueError, match="method must be one of"):
        common.config_for("tiny", "ppo", "rlvr")
    with pytest.raises(ValueError, match="preset"):
        common.config_for("huge", "ppo")
    with pytest.raises(ValueError, match="unknown config fields"):
        common.config_for("tiny", "ppo", lr_typo=1.0)
    cfg = common.parse_config(["--preset", "gpt2", "--method", "ppo", "--lr", "2e-5"])
    assert (cfg.model, cfg.lr, cfg.kl_coef, cfg.adaptive_kl, cfg.prompts_per_step) == ("gpt2", 2e-5, 0.2, True, 256)


# ------------------------------------------------------------------ FLOPs, MFU, memory


def test_param_count_and_flops_match_gpt2_and_llmc():
    cfg = GPT2Config()
    assert common.gpt2_param_count(cfg) == 124_439_808
    assert common.flop_params(cfg) == 123_653_376  # llm.c's N
    assert common.flops_per_token(cfg, 1024) == 855_166_464  # 6N + 12 L d T: llm.c's 0.855 GFLOP
    assert common.flops_per_token(cfg, 1024, "forward") * 3 == common.flops_per_token(cfg, 1024)
    with pytest.raises(ValueError):
        common.flops_per_token(cfg, 10, "backward")


def test_param_count_formula_equals_a_built_model(tok):
    model = models.tiny_gpt2(tok, n_layer=3, n_embd=32, n_head=4, n_positions=48)
    assert common.gpt2_param_count(model.config) == sum(p.numel() for p in model.parameters())


def test_kv_cache_bytes_equals_the_cache(tok, float64_default):
    model = models.tiny_gpt2(tok, n_layer=2, n_embd=16, n_head=2, n_positions=32)
    ids = torch.randint(5, 100, (3, 7))
    cache = model(input_ids=ids, use_cache=True).past_key_values
    tensors = [t for layer in range(2) for t in (cache.layers[layer].keys, cache.layers[layer].values)]
    measured = sum(t.numel() * t.element_size() for t in tensors)
    assert measured == common.kv_cache_bytes(model.config, 3, 7, 8)


def test_mfu_and_peaks():
    assert common.mfu(1e12, 2.0, None) is None
    assert common.mfu(1e12, 2.0, 1.0, 2) == pytest.approx(0.25)
    assert common.peak_tflops("cpu") is None and common.peak_tflops("cpu", 10) == 10.0
    assert common.format_mfu(None) == "n/a" and common.format_mfu(0.4) == "40.0%"
    with pytest.raises(ValueError):
        common.mfu(1.0, 0.0, 1.0)
    with pytest.raises(ValueError):
        common.peak_tflops("cpu", -1)


def test_memory_breakdown_bytes_per_parameter():
    n = 1000
    per = {m: common.memory_breakdown(m, n)["total"] / n for m in common.METHOD_MODELS}
    # fp32 weights 4, gradients 4, Adam 8 per trained parameter; frozen copies 4
    assert per == {"ppo": 36, "grpo": 20, "rloo": 20, "dpo": 20, "best_of_n": 4}
    assert common.memory_breakdown("best_of_n", n, kv_cache=50, activations=70)["activations"] == 0
    with pytest.raises(ValueError):
        common.memory_breakdown("sft", n)


def test_combine_rows_sums_counts_maxes_times_means_the_rest():
    rows = [{"step": 3, "method": "ppo", "reward": 1.0, "generated_tokens": 10, "time_update": 2.0,
             "peak_memory_mib": 5.0, "kl": None},
            {"step": 3, "method": "ppo", "reward": 3.0, "generated_tokens": 30, "time_update": 1.0,
             "peak_memory_mib": 7.0, "kl": None}]
    out = common.combine_rows(rows)
    assert out == {"step": 3, "method": "ppo", "reward": 2.0, "generated_tokens": 40, "time_update": 2.0,
                   "peak_memory_mib": 7.0, "kl": None}
    assert common.combine_rows(rows[:1]) == rows[0]
    with pytest.raises(ValueError):
        common.combine_rows([])
    done = common.finish_row({"generated_tokens": 40, "time_step": 4.0, "time_update": 2.0, "update_tokens": 8,
                              "update_flops": 4e12}, peak=1.0, world_size=2)
    assert done["tokens_per_s"] == 10 and done["update_tokens_per_s"] == 4 and done["mfu"] == 1.0


def saved_bytes(model, ids):
    """Bytes of the tensors autograd saves for the backward of sequence_logprobs (weights aside)."""
    from minirl.lm import sequence_logprobs

    seen, weights = {}, {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        sequence_logprobs(model, ids, torch.ones_like(ids))
    return sum(v for k, v in seen.items() if k not in weights)


def test_activation_estimate_matches_the_saved_tensors(tok, float64_default):
    model = models.tiny_gpt2(tok, n_layer=3, n_embd=64, n_head=4, n_positions=64).train()
    for B, T in ((2, 16), (3, 40)):
        ids = torch.randint(5, 600, (B, T))
        measured = saved_bytes(model, ids)
        assert measured == pytest.approx(common.activation_bytes_estimate(model.config, B, T, 8), rel=0.01)
    with pytest.raises(ValueError):
        common.activation_bytes_estimate(model.config, 1, 1, 8)


@pytest.mark.skipif(os.environ.get("MINIRL_DIST_TEST") != "1",
                    reason="two processes take ~20 s on 2 cores: set MINIRL_DIST_TEST=1 to run")
def test_two_processes_with_torchrun_reduce_the_metrics(tmp_path):
    # the multi-GPU path (accelerate's DDP) on CPU with gloo: 2 processes, each samples half
    import subprocess
    import sys

    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m",
           "minirl.experiments.gpt2_sentiment", "--preset", "tiny", "--method", "grpo", "--steps", "2",
           "--eval-prompts", "4", "--out-dir", str(out), "--no-progress"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["world_size"] for r in rows] == [2, 2]
    assert all(r["samples"] == 4 * 4 for r in rows)  # 4 prompts x G = 4, summed over the 2 processes


@pytest.mark.parametrize("method", ["ppo", "dpo"])
def test_the_bf16_autocast_path_runs(tmp_path, monkeypatch, method):
    # what a GPU run does (autocast_dtype_for gives bf16 on CUDA), exercised with CPU autocast
    from minirl import training

    monkeypatch.setattr(training, "autocast_dtype_for", lambda device: torch.bfloat16)
    res = run_tiny(tmp_path, f"bf16-{method}", method, "sentiment", "--steps", "1", "--dtype", "float32")
    assert res["rows"][0]["loss"] is not None and res["eval"]["n"] == 4
