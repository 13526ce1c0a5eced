"""One DPO epoch in minirl and in TRL's DPOTrainer, end to end, on the same model, pairs and batch size.

    python -m minirl.bench_trl_dpo              # 564 pairs, 16 pairs per step, 3 epochs per side (minutes)
    python -m minirl.bench_trl_dpo --quick      # 24 pairs, 8 per step, 1 epoch per side (seconds; the tests)

Three implementations, each timed for a whole epoch from the raw preference rows to the last
optimizer step (model loading is outside the timings; each run loads fresh copies):
- "minirl": `minirl.dpo.train_dpo` with its defaults (what lessons 10-12 run): tokenizing every
  pair once, the reference log-probs of all rows precomputed in chunks of 512 rows, shuffled
  minibatches, `sequence_logprobs` over every position;
- "minirl + options": the same with the opt-in speed options of `DPOConfig` (issue 9):
  group_by_length=True (length-grouped minibatches), reference_batch=2 * batch_size (the
  reference pass over rows sorted by length, at the training forward's size) and
  response_only_head=True (the LM head on the response positions only);
- TRL's DPOTrainer (trl 1.16.0): the trainer's construction (adding EOS and tokenizing the
  dataset) plus `trainer.train()`. Its reference log-probs are computed as TRL does by default
  (precompute_ref_log_probs=False): a no-grad forward of the reference model on every training
  batch, inside each step. TRL applies the LM head to the completion positions only by default
  (its "fused LM head").
Same on all sides: the trained tiny model data/tiny-sft (loaded by `models.load_policy` in
float32, the policy and a separate reference copy), the pairs of
data/preferences/tiny_reviews_train.jsonl, `batch_size` pairs per optimizer step (the last step
of the epoch gets the remainder), one epoch, beta 0.1, the sigmoid loss, AdamW at a constant
learning rate with no weight decay, gradient clipping at 1.0, truncation at max_len tokens (TRL:
max_length, keep_start; no pair of this file is that long). Both sides shuffle with their own
generator, so the minibatches differ; the work (pairs, steps) is the same. TRL's optimizer is the
Trainer's default AdamW (torch's, possibly fused); minirl's is torch.optim.AdamW's default.

Parts: minirl's are timed by wrapping `minirl.dpo.encode_preferences` (tokenize) and
`minirl.dpo._all_logps` (reference); TRL's "tokenize" is the trainer construction and its
"reference" the reference model's forwards (hooks). "steps" is the rest. The padding column is
real tokens / padded positions over the policy's training forwards (hooks on its body).

The check: after the last TRL epoch, TRL's `_compute_loss` and minirl's `dpo_loss` on
`concatenated_logps` compute the loss of the first `batch_size` pairs with the same (TRL-trained)
policy and the same reference; the bench prints both, their difference, and whether the two
tokenizations of those pairs are identical.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass, field

import torch

from . import bench
from .paths import DATA_DIR, relative
from .utils import get_device


@dataclass
class DPOCase:
    """One DPO epoch to time (both sides read these fields)."""

    model_dir: str = str(DATA_DIR / "tiny-sft")
    data: str = str(DATA_DIR / "preferences" / "tiny_reviews_train.jsonl")
    pairs: int | None = None  # the first `pairs` rows of `data` (None: all 564)
    batch_size: int = 16  # pairs per optimizer step
    beta: float = 0.1
    lr: float = 1e-4  # AdamW, constant, no weight decay
    max_grad_norm: float = 1.0
    max_len: int = 96  # tokens per prompt + response (TRL: max_length)
    runs: int = 3  # timed epochs per implementation (median reported), interleaved
    seed: int = 0
    dtype: torch.dtype = torch.float32
    options: dict = field(default_factory=lambda: {"group_by_length": True, "reference_batch": 32,
                                                   "response_only_head": True})


QUICK_DPO = DPOCase(pairs=24, batch_size=8, runs=1, options={"group_by_length": True, "reference_batch": 16,
                                                             "response_only_head": True})


def load_rows(case: DPOCase) -> list[dict]:
    from .world import read_jsonl

    rows = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in read_jsonl(case.data)]
    return rows if case.pairs is None else rows[: case.pairs]


def _models(case: DPOCase, device):
    from .models import load_policy

    policy, tok = load_policy(case.model_dir, device=device, dtype=case.dtype)
    ref, _ = load_policy(case.model_dir, device=device, dtype=case.dtype)
    return policy, ref, tok


class _Meter:
    """Accumulated seconds of named parts, and real / padded token counts of the policy's forwards."""

    def __init__(self, device):
        self.device, self.t, self.real, self.padded = device, {}, 0, 0

    def wrap(self, name, fn):
        def timed(*args, **kwargs):
            bench._sync(self.device)
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            bench._sync(self.device)
            self.t[name] = self.t.get(name, 0.0) + time.perf_counter() - t0
            return out
        return timed

    def time_module(self, name, module):
        """Hooks that add the time of every forward of `module` to part `name`."""
        def pre(mod, args):
            bench._sync(self.device)
            self.t["_" + name] = time.perf_counter()

        def post(mod, args, out):
            bench._sync(self.device)
            self.t[name] = self.t.get(name, 0.0) + time.perf_counter() - self.t.pop("_" + name)

        return [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]

    def count_padding(self, body):
        """A hook on the policy's body (GPT-2's transformer, which every forward goes through)."""
        def pre(mod, args, kwargs):
            if torch.is_grad_enabled():  # training forwards only
                am = kwargs.get("attention_mask")
                if am is not None:
                    self.real += int(am.sum())
                    self.padded += am.numel()
        return body.register_forward_pre_hook(pre, with_kwargs=True)


def minirl_epoch(case: DPOCase, device, options: dict | None = None) -> dict:
    """One epoch of `train_dpo` (with `options`, new DPOConfig fields), timed end to end and in parts."""
    from . import dpo

    policy, ref, tok = _models(case, device)
    rows = load_rows(case)
    cfg = dpo.DPOConfig(beta=case.beta, loss_type="sigmoid", lr=case.lr, epochs=1, batch_size=case.batch_size,
                        weight_decay=0.0, max_grad_norm=case.max_grad_norm, max_len=case.max_len, seed=case.seed,
                        **(options or {}))
    m = _Meter(device)
    saved = dpo.encode_preferences, dpo._all_logps
    dpo.encode_preferences = m.wrap("tokenize", dpo.encode_preferences)
    dpo._all_logps = m.wrap("reference", dpo._all_logps)
    hook = m.count_padding(policy.base_model)
    try:
        bench._sync(device)
        t0 = time.perf_counter()
        dpo.train_dpo(policy, ref, tok, rows, cfg)
        bench._sync(device)
        epoch = time.perf_counter() - t0
    finally:
        dpo.encode_preferences, dpo._all_logps = saved
        hook.remove()
    return _row(m, epoch, -(-len(rows) // case.batch_size))


def _row(m: _Meter, epoch: float, steps: int) -> dict:
    tok, ref = m.t.get("tokenize", 0.0), m.t.get("reference", 0.0)
    return {"epoch": epoch, "tokenize": tok, "reference": ref, "steps": epoch - tok - ref, "n_steps": steps,
            "real_fraction": m.real / max(m.padded, 1)}


def trl_trainer(case: DPOCase, policy, ref, tok, rows, outdir: str):
    """TRL's DPOTrainer configured like `minirl_epoch` (see the module docstring)."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = DPOConfig(
            output_dir=outdir, report_to="none", use_cpu=torch.device(policy.device).type == "cpu", seed=case.seed,
            per_device_train_batch_size=case.batch_size, gradient_accumulation_steps=1, num_train_epochs=1,
            learning_rate=case.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
            max_grad_norm=case.max_grad_norm, beta=case.beta, loss_type=["sigmoid"], max_length=case.max_len,
            save_strategy="no", disable_tqdm=True, dataloader_num_workers=0, bf16=False, fp16=False,
        )
        return DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=Dataset.from_list(rows),
                          processing_class=tok)


def trl_epoch(case: DPOCase, device, outdir: str, keep: dict | None = None) -> dict:
    """Build TRL's trainer and train one epoch, timed end to end and in parts. With `keep` (a
    dict), the trainer and the models are left in it for the loss check."""
    from transformers.trainer_callback import PrinterCallback

    policy, ref, tok = _models(case, device)
    rows = load_rows(case)
    m = _Meter(device)
    hooks = m.time_module("reference", ref) + [m.count_padding(policy.base_model)]
    try:
        bench._sync(device)
        t0 = time.perf_counter()
        trainer = trl_trainer(case, policy, ref, tok, rows, outdir)
        trainer.remove_callback(PrinterCallback)  # no per-step log dicts on stdout
        bench._sync(device)
        m.t["tokenize"] = time.perf_counter() - t0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            trainer.train()
        bench._sync(device)
        epoch = time.perf_counter() - t0
    finally:
        for h in hooks:
            h.remove()
    if keep is not None:
        keep.update(trainer=trainer, policy=policy, ref=ref, tok=tok, rows=rows)
    return _row(m, epoch, trainer.state.global_step)


@torch.no_grad()
def first_batch_check(case: DPOCase, keep: dict) -> dict:
    """TRL's and minirl's DPO loss on the first batch_size pairs, same policy (TRL-trained) and reference."""
    from . import dpo
    from .losses import dpo_loss

    trainer, policy, ref, tok, rows = (keep[k] for k in ("trainer", "policy", "ref", "tok", "rows"))
    n = min(case.batch_size, len(rows))
    policy.eval()
    inputs = trainer.data_collator([trainer.train_dataset[i] for i in range(n)])
    inputs = {k: v.to(policy.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    trl_loss = float(trainer._compute_loss(policy, inputs, return_outputs=False))
    batch = {k: v.to(policy.device) for k, v in dpo.encode_preferences(tok, rows[:n], case.max_len).items()}
    chosen, rejected = dpo.concatenated_logps(policy, batch)
    ref_chosen, ref_rejected = dpo.concatenated_logps(ref, batch)
    ours, _ = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=case.beta, loss_type="sigmoid")
    w = batch["input_ids"].shape[1]
    same_tokens = (inputs["input_ids"].shape == batch["input_ids"].shape
                   and bool((inputs["input_ids"] * inputs["attention_mask"] == batch["input_ids"] * batch["attention_mask"]).all())
                   and bool((inputs["completion_mask"] == batch["response_mask"]).all()))
    return {"trl": trl_loss, "minirl": float(ours), "diff": abs(trl_loss - float(ours)), "same_tokens": same_tokens,
            "pairs": n, "width": w}


def format_dpo_table(results: dict[str, list[dict]], case: DPOCase, n_pairs: int) -> str:
    lines = [f"DPO epoch: {n_pairs} pairs, {case.batch_size} pairs per step, beta {case.beta}, sigmoid loss, "
             f"{str(case.dtype).replace('torch.', '')}; median of {case.runs} epoch(s) per row",
             "",
             "| implementation | epoch | tokenize | reference log-probs | steps | optimizer steps "
             "| real tokens / padded positions | epochs (s) |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for name, runs in results.items():
        med = {k: statistics.median(r[k] for r in runs) for k in ("epoch", "tokenize", "reference", "steps")}
        all_runs = ", ".join(f"{r['epoch']:.2f}" for r in runs)
        lines.append(f"| {name} | {med['epoch']:.2f} s | {med['tokenize']:.2f} s | {med['reference']:.2f} s | "
                     f"{med['steps']:.2f} s | {runs[0]['n_steps']} | {runs[0]['real_fraction']:.0%} | {all_runs} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m minirl.bench_trl_dpo", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: 24 pairs, 8 per step, 1 epoch per side")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--runs", type=int, default=None, help="timed epochs per implementation (default 3)")
    args = parser.parse_args(argv)
    device = get_device(args.device)
    case = QUICK_DPO if args.quick else DPOCase()
    if args.runs is not None:
        case = DPOCase(**{**case.__dict__, "runs": args.runs})
    import trl
    from transformers.utils import logging as hf_logging

    n_pairs = len(load_rows(case))
    print(bench.describe_machine(device))
    print(f"model {relative(case.model_dir)}, pairs {relative(case.data)} ({n_pairs}); "
          f"{case.runs} epoch(s) per implementation, interleaved ...", flush=True)
    trl_name = f"TRL {trl.__version__} DPOTrainer"
    opt_name = "minirl + options"
    results = {"minirl": [], opt_name: [], trl_name: []}
    keep = {}
    import datasets

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # TRL's dataset.map calls (adding EOS, tokenizing) would draw bars
    try:
        with tempfile.TemporaryDirectory(prefix="minirl_bench_trl_dpo_") as outdir:
            for i in range(case.runs):
                results["minirl"].append(minirl_epoch(case, device))
                results[opt_name].append(minirl_epoch(case, device, case.options))
                results[trl_name].append(trl_epoch(case, device, outdir, keep if i == case.runs - 1 else None))
                print(f"  run {i + 1}: " + ", ".join(f"{k} {v[-1]['epoch']:.2f} s" for k, v in results.items()),
                      flush=True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # transformers' gradient_checkpointing renames
                check = first_batch_check(case, keep)
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
        if bars:
            datasets.enable_progress_bars()
    print()
    print(format_dpo_table(results, case, n_pairs))
    print("options: " + ", ".join(f"{k}={v}" for k, v in case.options.items()))
    epoch = {k: statistics.median(r["epoch"] for r in v) for k, v in results.items()}
    ratio = epoch[trl_name] / epoch["minirl"]
    ratio_opt = epoch[trl_name] / epoch[opt_name]
    print(f"\nTRL epoch / minirl epoch = {ratio:.2f} (defaults)")
    print(f"TRL epoch / minirl epoch = {ratio_opt:.2f} (with the options)")
    print(f"first {check['pairs']} pairs, same policy and reference: DPO loss TRL {check['trl']:.8f}, "
          f"minirl {check['minirl']:.8f}, |difference| {check['diff']:.1e}; "
          f"token ids and completion masks identical: {check['same_tokens']}")
    print(bench.describe_machine(device).split("; ")[-1])  # the load average again, after the runs
    print(bench.peak_memory(device))
    return {"results": results, "ratio": ratio, "ratio_options": ratio_opt, "check": check}


if __name__ == "__main__":
    main()
