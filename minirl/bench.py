"""How fast are minirl's sequence functions on this machine? A small benchmark.

    python -m minirl.bench              # the tiny config and GPT-2 124M (minutes on 2 CPU cores)
    python -m minirl.bench --quick      # a minuscule config only, a few seconds (what the tests run)

For each model it times, with the same functions the lessons use (minirl.lm):
- generation with and without the KV cache (`generate(use_cache=...)`), in generated tokens/s;
- the teacher-forced log-prob pass (`sequence_logprobs` under no_grad), in tokens/s;
- one training step: log-probs with gradients, a masked negative log-likelihood, backward, AdamW;
- for the tiny model, a PPO/GRPO-sized rollout: 64 responses of 32 tokens with the KV cache;
- one GRPO step on the trained tiny model (data/tiny-sft) with its arithmetic verifier: G samples for
  each of 8 prompts, scoring, reference log-probs, and the update: the package's own step
  (`minirl.algos.grpo.grpo_step`), split into the parts it logs. `python -m minirl.bench_trl_grpo` times the same step in TRL's GRPOTrainer and prints the
  ratio. `--skip-grpo` leaves it out.
- with `--dpo`, one DPO epoch in minirl (defaults, and with the opt-in speed options) and in TRL's
  DPOTrainer, end to end, printing `TRL epoch / minirl epoch` (`minirl.bench_trl_dpo`, which
  can also be run alone: `python -m minirl.bench_trl_dpo`; needs trl).
Weights of the sequence benchmarks are random (timing does not depend on them); the tiny config is read from
data/tiny-sft/config.json when that checkpoint exists. Each time is the median over `repeats`
calls after a warm-up call (GPT-2 124M: one call, no warm-up except for the training step).
Prints the device and a markdown table. On a shared machine the times are inflated and noisy.
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import time
from dataclasses import dataclass, field

import torch

from . import lm
from .paths import DATA_DIR, relative
from .rewards import arithmetic_rewards
from .rollout import make_reference
from .utils import get_device
from .world import arithmetic_prompts


@dataclass
class Case:
    """One model to time."""

    name: str  # label in the table
    config: dict = field(default_factory=dict)  # GPT2Config keyword arguments (or loaded from `config_dir`)
    batch: int = 8  # B: prompts per generate call / rows per log-prob and training batch
    prompt_len: int = 16  # longest prompt; prompts have random lengths in [prompt_len // 2, prompt_len]
    new_tokens: int = 32  # T = max_new_tokens
    repeats: int = 3  # timed calls per measurement (median reported)
    warmup: int = 1  # untimed calls before them (the training step always gets one: AdamW allocates its state)
    rollout: tuple[int, int] | None = None  # (responses, tokens) for a PPO/GRPO-sized rollout, or None
    config_dir: str | None = None  # a checkpoint folder whose config.json to use instead of `config`


TINY = dict(n_layer=4, n_head=4, n_embd=128, vocab_size=1024, n_positions=256)
MINUSCULE = dict(n_layer=1, n_head=2, n_embd=16, vocab_size=64, n_positions=32)


def default_cases(quick: bool, skip_124m: bool = False) -> list[Case]:
    if quick:
        return [Case("minuscule", MINUSCULE, batch=2, prompt_len=4, new_tokens=4, repeats=1, rollout=(8, 4))]
    tiny_dir = DATA_DIR / "tiny-sft"
    tiny = Case("tiny", TINY, batch=16, rollout=(64, 32))
    if (tiny_dir / "config.json").exists():
        tiny = Case("tiny-sft", batch=16, rollout=(64, 32), config_dir=str(tiny_dir))
    cases = [tiny]
    if not skip_124m:
        cases.append(Case("gpt2-124M", {}, batch=4, new_tokens=16, repeats=1, warmup=0))
    return cases


def build_model(case: Case, device, seed: int = 0):
    """A randomly initialised causal LM of the case's config, dropout off, on `device`."""
    from transformers import AutoConfig, AutoModelForCausalLM, GPT2Config

    torch.manual_seed(seed)
    if case.config_dir is not None:
        cfg = AutoConfig.from_pretrained(case.config_dir)
    else:  # special ids inside the vocabulary (GPT2Config defaults them to 50256 for any vocab size)
        v = case.config.get("vocab_size", GPT2Config().vocab_size)
        cfg = GPT2Config(**case.config, bos_token_id=v - 1, eos_token_id=v - 1, pad_token_id=v - 2)
    for name in ("resid_pdrop", "embd_pdrop", "attn_pdrop"):
        if hasattr(cfg, name):
            setattr(cfg, name, 0.0)
    return AutoModelForCausalLM.from_config(cfg).to(device)


def random_prompts(case: Case, vocab: int, n: int, generator, device):
    """n left-padded prompts of random token ids (avoiding the special ids), lengths in [P/2, P]."""
    lens = torch.randint(max(1, case.prompt_len // 2), case.prompt_len + 1, (n,), generator=generator)
    rows = [torch.randint(0, vocab - 2, (int(k),), generator=generator) for k in lens]
    ids, mask = lm.left_pad(rows, vocab - 2)
    return ids.to(device), mask.to(device)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, repeats: int, device, warmup: int = 1) -> tuple[float, object]:
    """Median wall time of `fn()` over `repeats` calls after `warmup` untimed calls, and its last result."""
    for _ in range(warmup):
        fn()
    _sync(device)
    out = None
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def bench_case(case: Case, device, seed: int = 0) -> list[dict]:
    model = build_model(case, device, seed)
    vocab = model.config.vocab_size
    eos, pad = vocab - 1, vocab - 2
    n_params = sum(p.numel() for p in model.parameters())
    g = torch.Generator().manual_seed(seed)
    ids, mask = random_prompts(case, vocab, case.batch, g, device)
    rows = []

    def row(what, seconds, n_tokens, shape):
        rows.append(dict(model=case.name, params=n_params, what=what, shape=shape, seconds=seconds,
                         tokens_per_s=n_tokens / seconds))

    def sample(p_ids, p_mask, use_cache):
        gen_g = torch.Generator(device=device).manual_seed(seed)
        return lm.generate(model, p_ids, p_mask, case.new_tokens, eos, pad, generator=gen_g, use_cache=use_cache)

    shape = f"{case.batch} x ({case.prompt_len}+{case.new_tokens})"
    for use_cache in (True, False):
        s, out = timed(lambda: sample(ids, mask, use_cache), case.repeats, device, case.warmup)
        row("generate, KV cache" if use_cache else "generate, no cache", s, int(out.response_mask.sum()), shape)
    seqs, attn = out.sequences, out.attention_mask
    n_real = int(attn.sum())

    def logprob_pass():
        with torch.no_grad():
            return lm.sequence_logprobs(model, seqs, attn)

    s, _ = timed(logprob_pass, case.repeats, device, case.warmup)
    row("log-prob pass (no grad)", s, n_real, shape)

    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    model.train()

    def train_step():
        lp = lm.response_logprobs(model, seqs, attn, out.prompt_length)
        loss = -lm.sequence_sum(lp, out.response_mask).mean()  # masked NLL of the responses
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    s, _ = timed(train_step, case.repeats, device, max(1, case.warmup))
    row("train step (fwd+bwd+AdamW)", s, n_real, shape)
    model.eval()

    if case.rollout is not None:
        n, T = case.rollout
        r_ids, r_mask = random_prompts(case, vocab, n, g, device)

        def rollout():
            gen_g = torch.Generator(device=device).manual_seed(seed)
            return lm.generate(model, r_ids, r_mask, T, eos, pad, generator=gen_g)

        s, r = timed(rollout, case.repeats, device, case.warmup)
        row(f"rollout {n} x {T} tokens, KV cache", s, int(r.response_mask.sum()), f"{n} x ({case.prompt_len}+{T})")
    del model, opt
    return rows


# ------------------------------------------------------------------------------ one GRPO step


@dataclass
class GRPOCase:
    """One GRPO step to time, on the trained tiny model and the arithmetic verifier. The TRL
    benchmark (minirl.bench_trl_grpo) builds its GRPOConfig from the same fields."""

    prompts: int = 8  # prompts per step
    group: int = 8  # G samples per prompt: prompts * group completions per step
    max_new_tokens: int = 32  # completion limit (TRL's max_completion_length)
    steps: int = 3  # timed steps (median reported); each step gets fresh prompts
    warmup: int = 1  # untimed steps before them
    beta: float = 0.04  # k3 KL to the reference, so the step includes the reference log-probs
    loss_type: str = "dapo"  # TRL's default loss_type
    lr: float = 1e-5  # AdamW, constant
    max_grad_norm: float = 1.0  # TRL's default
    temperature: float = 1.0
    model_dir: str = str(DATA_DIR / "tiny-sft")
    seed: int = 0


QUICK_GRPO = GRPOCase(prompts=2, group=2, max_new_tokens=4, steps=1, warmup=0)


def grpo_problems(case: GRPOCase) -> list[list[dict]]:
    """The arithmetic problems of each step (warm-up steps first): `case.prompts` per step."""
    n = case.prompts * (case.warmup + case.steps)
    rows = arithmetic_prompts(n, seed=case.seed)
    return [rows[i : i + case.prompts] for i in range(0, n, case.prompts)]


def grpo_config(case: GRPOCase, n_steps: int):
    """The `minirl.algos.grpo.GRPOConfig` of the benchmark's step: one optimizer step per rollout on
    the whole batch (num_iterations = 1, no minibatches, so the old log-probs are the sampler's),
    the case's loss_type, beta, learning rate, clipping and completion limit."""
    from .algos import grpo

    return grpo.GRPOConfig(n_iterations=n_steps, prompts_per_step=case.prompts, group_size=case.group,
                           max_new_tokens=case.max_new_tokens, temperature=case.temperature, lr=case.lr,
                           max_grad_norm=case.max_grad_norm, loss_type=case.loss_type, beta=case.beta,
                           scale_rewards="group", num_iterations=1, log_kl=True, seed=case.seed)


def bench_grpo(case: GRPOCase, device) -> dict:
    """Median over `case.steps` GRPO steps (after `case.warmup`) of the parts of the package's own
    step, `minirl.algos.grpo.grpo_step` (the loop the lessons and the GPT-2 entry points run), as it
    logs them: generation (incl. tokenizing and decoding), scoring (the exact-answer verifier),
    reference log-probs, update (forward with the entropy, as TRL's also computes, backward,
    clipping, optimizer step), and the whole call. The optimizer is AdamW with weight decay 0.01,
    TRL's default, in place of the loop's Adam. Returns a dict with keys generation, scoring,
    reference, update, step (seconds), completion_tokens, reward (means over the timed steps)."""
    from .algos import grpo
    from .models import load_policy

    policy, tokenizer = load_policy(case.model_dir, device=device)
    steps = grpo_problems(case)
    cfg = grpo_config(case, len(steps))
    state = grpo.init_grpo(policy, cfg, ref_model=make_reference(policy))
    state.optimizer = torch.optim.AdamW(policy.parameters(), lr=case.lr, weight_decay=0.01)
    runs = []
    for i, problems in enumerate(steps):
        answer = {p["prompt"]: p["answer"] for p in problems}

        def score(s):  # the reward contract: the exact-answer verifier on each response
            return arithmetic_rewards(s.responses, [answer[p] for p in s.prompts])

        _sync(device)
        t0 = time.perf_counter()
        row = grpo.grpo_step(state, tokenizer, [p["prompt"] for p in problems], score, cfg)
        _sync(device)
        if i >= case.warmup:
            runs.append({"generation": row["time_generate"], "scoring": row["time_score"],
                         "reference": row["time_reference"], "update": row["time_update"],
                         "step": time.perf_counter() - t0,
                         "completion_tokens": int(state.last_samples.response_mask.sum()),
                         "reward": row["reward"]})
    return summarize_steps(runs)


GRPO_PARTS = ("generation", "scoring", "reference", "update", "step")


def summarize_steps(runs: list[dict]) -> dict:
    """Medians of the timed parts, means of the token counts and rewards, over the timed steps."""
    out = {k: statistics.median(r[k] for r in runs) for k in GRPO_PARTS}
    out["completion_tokens"] = statistics.mean(r["completion_tokens"] for r in runs)
    out["reward"] = statistics.mean(r["reward"] for r in runs)
    out["n_steps"] = len(runs)
    return out


def format_grpo_table(results: dict[str, dict], case: GRPOCase) -> str:
    """One row per implementation: the parts of a GRPO step and its total, in seconds."""
    lines = [f"GRPO step: {case.prompts} prompts x G = {case.group} samples, <= {case.max_new_tokens} new tokens, "
             f"beta = {case.beta}, loss_type = {case.loss_type} (median of {case.steps} steps after {case.warmup} warm-up)",
             "",
             "| implementation | generation | scoring | reference log-probs | update | step | completion tokens/step | mean reward |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['generation']:.3f} s | {r['scoring']:.3f} s | {r['reference']:.3f} s | "
                     f"{r['update']:.3f} s | {r['step']:.3f} s | {r['completion_tokens']:.0f} | {r['reward']:.3f} |")
    return "\n".join(lines)


def peak_memory(device) -> str:
    """Peak resident memory of this process (Linux reports kB, macOS bytes), and CUDA peak if used."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_mib = rss / 2**20 if platform.system() == "Darwin" else rss / 2**10
    text = f"peak RSS {rss_mib:.0f} MiB"
    if device.type == "cuda":
        text += f", peak CUDA memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB"
    return text


def format_table(rows: list[dict]) -> str:
    lines = ["| model | params | measurement | batch x (prompt+new) | time | tokens/s |",
             "|---|---:|---|---|---:|---:|"]
    for r in rows:
        n = r["params"]
        size = f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"
        lines.append(f"| {r['model']} | {size} | {r['what']} | {r['shape']} | "
                     f"{r['seconds']:.3f} s | {r['tokens_per_s']:,.0f} |")
    return "\n".join(lines)


def describe_machine(device) -> str:
    text = f"device: {device}"
    if device.type == "cuda":
        text += f" ({torch.cuda.get_device_name(device)})"
    else:
        text += f" ({platform.processor() or platform.machine()}, {os.cpu_count()} cores visible, " \
                f"torch threads {torch.get_num_threads()})"
    text += f"; torch {torch.__version__}"
    if hasattr(os, "getloadavg"):  # other processes competing for the cores inflate every time below
        text += f"; load average {os.getloadavg()[0]:.1f} (1 min) on {os.cpu_count()} cores"
    return text


def main(argv=None, cases: list[Case] | None = None, grpo: GRPOCase | None = None) -> list[dict]:
    """Run the benchmark. With `cases` given (tests), the GRPO step runs only if `grpo` is given;
    from the command line it runs unless --skip-grpo (QUICK_GRPO with --quick)."""
    parser = argparse.ArgumentParser(prog="python -m minirl.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a minuscule config only (seconds)")
    parser.add_argument("--skip-124m", action="store_true", help="time the tiny config only")
    parser.add_argument("--skip-grpo", action="store_true", help="leave out the GRPO step")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--dpo", action="store_true",
                        help="also time a DPO epoch against TRL's DPOTrainer (minirl.bench_trl_dpo; needs trl)")
    args = parser.parse_args(argv)
    device = get_device(args.device)
    if cases is None:
        cases = default_cases(args.quick, args.skip_124m)
        if grpo is None and not args.skip_grpo:
            grpo = QUICK_GRPO if args.quick else GRPOCase()
    print(describe_machine(device))
    rows = []
    for case in cases:
        src = f" (config from {relative(case.config_dir)})" if case.config_dir else ""
        print(f"timing {case.name}{src} ...", flush=True)
        rows.extend(bench_case(case, device))
    print()
    print(format_table(rows))
    for name in dict.fromkeys(r["model"] for r in rows):
        by = {r["what"]: r for r in rows if r["model"] == name}
        speedup = by["generate, no cache"]["seconds"] / by["generate, KV cache"]["seconds"]
        print(f"\n{name}: the KV cache makes generation {speedup:.1f}x faster")
    if grpo is not None:
        print(f"\ntiming one GRPO step on {relative(grpo.model_dir)} ...", flush=True)
        res = bench_grpo(grpo, device)
        print()
        print(format_grpo_table({"minirl": res}, grpo))
        rows.append(dict(model=relative(grpo.model_dir), what="grpo step", **res))
    if args.dpo:
        from . import bench_trl_dpo

        print("\ntiming one DPO epoch in minirl and in TRL's DPOTrainer ...", flush=True)
        res = bench_trl_dpo.main((["--quick"] if args.quick else []) + ["--device", str(device)])
        rows.append(dict(model="dpo epoch", what="TRL epoch / minirl epoch", ratio=res["ratio"],
                         ratio_options=res["ratio_options"]))
    else:
        print("\nDPO epoch against TRL's DPOTrainer: python -m minirl.bench --dpo (or python -m minirl.bench_trl_dpo)")
    print(peak_memory(device))
    return rows


if __name__ == "__main__":
    main()
