"""One GRPO step in minirl and in TRL's GRPOTrainer, side by side, on the same model and prompts.

    python -m minirl.bench_trl_grpo              # 8 prompts x G = 8, <= 32 new tokens, 3 timed steps
    python -m minirl.bench_trl_grpo --quick      # 2 prompts x G = 2, 4 tokens, 1 step (a smoke run)

Both sides run the same step, built from the same `minirl.bench.GRPOCase`:
- model: the trained tiny model (data/tiny-sft), loaded twice by `models.load_policy` (one copy
  per side, same dtype), and a frozen reference copy (TRL builds its own from the same folder);
- prompts: `world.arithmetic_prompts`, `prompts` per step, in the same order (TRL:
  shuffle_dataset=False), each sampled G times, temperature 1, no top-k / top-p, at most
  `max_new_tokens` new tokens, stopping at EOS;
- reward: the exact-answer verifier `rewards.arithmetic_rewards`; advantages (r - mean) / (std + 1e-4)
  per group (TRL's scale_rewards="group");
- update: one optimizer step per generation batch on the whole batch (TRL: per_device_train_batch_size
  = prompts * G, num_iterations = 1, so old log-probs are not recomputed on either side), loss_type
  "dapo" (TRL's default), beta = 0.04 (so both compute reference log-probs), gradient clipping at
  1.0, AdamW at a constant learning rate.
Times: minirl's side is the package's own step, `minirl.algos.grpo.grpo_step`, with the parts it
logs (time_generate, time_score, time_reference, time_update); TRL's step is timed from the trainer's
on_step_begin to on_step_end callbacks (so it includes everything the trainer does in a step:
generation, scoring, reference, loss, backward, clipping, optimizer and scheduler steps, its
metric bookkeeping), and its parts by wrapping `_generate` (tokenize, generate, decode),
`_calculate_rewards` and the reference model's `_get_per_token_logps_and_entropies` call. TRL's
"update" is the step minus those parts. Both sides report the median over the timed steps after
the warm-up. Both loss forwards also compute the per-token entropy (both log it), and both log the KL.
Sampling is random on both sides, so the completion lengths differ between them: the table prints
the completion tokens per step of each, and the ratio is of step times, not per token.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings

import torch

from . import bench
from .paths import relative
from .rewards import arithmetic_rewards
from .utils import get_device


def trl_grpo_trainer(case: bench.GRPOCase, device, outdir: str):
    """TRL's GRPOTrainer configured like `bench.grpo_config` (see the module docstring)."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from .models import load_policy

    policy, tokenizer = load_policy(case.model_dir, device=device)
    rows = [p for step in bench.grpo_problems(case) for p in step]
    ds = Dataset.from_list([{"prompt": p["prompt"], "answer": p["answer"]} for p in rows])

    def exact_answer(completions, answer, **kwargs):
        return arithmetic_rewards(list(completions), list(answer)).tolist()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = GRPOConfig(
            output_dir=outdir, report_to="none", use_cpu=device.type == "cpu", seed=case.seed,
            per_device_train_batch_size=case.prompts * case.group, num_generations=case.group,
            gradient_accumulation_steps=1, num_iterations=1, max_completion_length=case.max_new_tokens,
            temperature=case.temperature, top_p=1.0, top_k=0, beta=case.beta, loss_type=case.loss_type,
            scale_rewards="group", learning_rate=case.lr, lr_scheduler_type="constant", warmup_steps=0,
            weight_decay=0.01, max_grad_norm=case.max_grad_norm, max_steps=case.warmup + case.steps,
            shuffle_dataset=False, save_strategy="no", logging_steps=1, disable_tqdm=True, log_completions=False,
            dataloader_num_workers=0, bf16=False, fp16=False,
        )
        trainer = GRPOTrainer(
            model=policy, reward_funcs=exact_answer, args=args, train_dataset=ds, processing_class=tokenizer,
        )
    return trainer


def time_trl_steps(trainer, case: bench.GRPOCase, device) -> dict:
    """Run trainer.train() and time each step and its parts; the bench.summarize_steps dict."""
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback

    runs, current = [], {}

    def _sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def wrap(name, fn, when=lambda *a, **k: True):
        def timed(*args, **kwargs):
            if not when(*args, **kwargs):
                return fn(*args, **kwargs)
            _sync()
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            _sync()
            current[name] = current.get(name, 0.0) + time.perf_counter() - t0
            return out
        return timed

    trainer._generate = wrap("generation", trainer._generate)
    trainer._calculate_rewards = wrap("scoring", trainer._calculate_rewards)
    trainer._get_per_token_logps_and_entropies = wrap(
        "reference", trainer._get_per_token_logps_and_entropies,
        when=lambda model, *a, **k: model is trainer.ref_model,
    )

    n = case.prompts * case.group

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            current.clear()
            _sync()
            current["t0"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            _sync()
            step = time.perf_counter() - current.pop("t0")
            parts = {k: current.get(k, 0.0) for k in ("generation", "scoring", "reference")}
            parts["update"] = step - sum(parts.values())
            parts["step"] = step
            metrics = trainer._metrics["train"]  # this step's (the trainer logs and clears them after)
            parts["completion_tokens"] = metrics["completions/mean_length"][-1] * n
            parts["reward"] = metrics["reward"][-1]
            runs.append(parts)

    trainer.add_callback(StepTimer())
    trainer.remove_callback(PrinterCallback)  # no per-step log dicts on stdout
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers' gradient_checkpointing renames
        trainer.train()
    timed = runs[case.warmup :]
    return bench.summarize_steps(timed)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m minirl.bench_trl_grpo", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 prompts x 2 samples, 4 tokens, 1 step")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 3)")
    args = parser.parse_args(argv)
    device = get_device(args.device)
    case = bench.QUICK_GRPO if args.quick else bench.GRPOCase()
    if args.steps is not None:
        case = bench.GRPOCase(**{**case.__dict__, "steps": args.steps})
    print(bench.describe_machine(device))
    print(f"model {relative(case.model_dir)}; timing minirl ...", flush=True)
    results = {"minirl": bench.bench_grpo(case, device)}
    print("timing TRL GRPOTrainer ...", flush=True)
    import trl
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # quiet model loading (TRL loads its reference from the folder)
    hf_logging.disable_progress_bar()
    try:
        with tempfile.TemporaryDirectory(prefix="minirl_bench_trl_") as outdir:
            trainer = trl_grpo_trainer(case, device, outdir)
            results[f"TRL {trl.__version__} GRPOTrainer"] = time_trl_steps(trainer, case, device)
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    print()
    print(bench.format_grpo_table(results, case))
    ours, theirs = results["minirl"], results[f"TRL {trl.__version__} GRPOTrainer"]
    ratio = theirs["step"] / ours["step"]
    print(f"\nTRL step / minirl step = {ratio:.2f} (minirl is {ratio:.2f}x {'faster' if ratio >= 1 else 'slower'})")
    for part in ("generation", "reference", "update"):
        if ours[part] > 0:
            print(f"  {part}: TRL / minirl = {theirs[part] / ours[part]:.2f}")
    print(bench.peak_memory(device))
    results["ratio"] = ratio
    return results


if __name__ == "__main__":
    main()
