"""minirl: the small library behind the course. One concept per module; each module's docstring
names the lesson that derives it. Each layer imports only from the layers above it.

  conventions
    paths          repo-relative DATA_DIR, FIGURES_DIR, artifact_dir (runs/ vs data/)  (all)
    utils          seeding, device, quiet progress bars, timers                       (all)
    checks         input validation shared by every public function (check_prompts)   (all)
    masks          masked sum / mean / var (NaN-safe on padding)                      (all)
    plotting       the house style and save_figure                                    (all)
    notebook_tools execute a lesson in a fresh kernel and time it; --tidy             (all)
  tensor math (pure functions, shapes and masks in the docstrings)
    kl             k1/k2/k3, exact categorical and sequence KL, KL controllers         (lessons 02, 08)
    advantages     GAE, lambda-returns, credit share, whitening, group baselines,
                   DAPO's overlong penalty and zero-std filter                         (lessons 06, 13)
    losses         REINFORCE, PPO, SFT, Bradley-Terry, DPO family, grpo_loss          (lessons 01, 03-13)
  language models
    tokenizer      byte-level BPE for the tiny world, batch encoders                  (lesson 03)
    models         tiny GPT-2 config, load_policy (local folder or hub), scalar heads (lessons 03, 05, 08)
    lm             generation with sampling log-probs, teacher-forced log-probs       (lessons 03, 04)
  worlds and toys
    world          the tiny world: reviews, arithmetic, instructions, gold scorer     (lesson 03)
    rewards        lexicon sentiment, review reward, arithmetic verifiers             (lessons 03, 04, 13)
    verifiers      step checker, sum / min / mean over steps, one contract
                   fn(prompt, response) -> float per verifier (outcome, format,
                   process, loose), robust to any text                                 (lesson 14)
    bandit, dpo_bandit, toy_mdp   exactly solvable toys                              (lessons 01, 06, 07, 10)
  shared RL plumbing (every algorithm)
    rollout        sample -> Samples, make_reference, generators, scorers, per-token
                   and sequence KL                                                     (lessons 04, 08, 13)
    training       optimizer_step (token-weighted accumulation, clipping, autocast,
                   device), checkpoints with RNG states (bitwise resume), run log,
                   run_loop (the outer loop every train_* shares)                      (issue 9)
    evaluation     evaluate_policy: the reward-KL point with standard errors          (lessons 08-12)
    labeling       rank-and-pair with any batched scorer (gold, reward model,
                   verifier, judge); a pairwise judge's verdicts parsed into pairs
                   with counted failures; preference-pair files                       (lessons 05, 12, 15)
    judges         AI judges: position / length / self-preference bias,
                   Constitutional AI revisions, CGPO's calibrated reward,
                   constraint judges, CRPG / CRRAFT filters                           (lesson 15)
    ttc            pass@k, majority and weighted votes, best-of-n selection, and
                   their unbiased estimators from a pool of samples                   (lessons 14, 16)
  algorithms (each: a flat config, a state, a step, a loop with a JSONL log and checkpoints)
    algos.sft      pretraining / SFT (lesson 03's loop), micro-batch accumulation     (lessons 03, 15, 16)
    algos.reinforce  REINFORCE on sequences (lesson 04's loop)                         (lesson 04)
    reward_model   reward-model training and evaluation against a hidden gold         (lesson 05)
    rlhf           PPO-RLHF: rollout, KL-penalized rewards, update, train_ppo          (lesson 08)
    bon            best-of-n, its exact distribution and KL, rejection sampling
                   (with a constraint filter: CGPO's CRRAFT)                          (lessons 09, 15)
    dpo            sequence-level DPO helpers and train_dpo                            (lesson 10)
    algos.dpo      the DPO family with the loss as a parameter, online DPO and SPIN
                   rounds                                                             (lessons 10-12)
    algos.grpo     RLOO / GRPO / Dr. GRPO / DAPO / GSPO: one config, one step, one loop (lesson 13)
  programs and tools
    experiments    `python -m minirl.experiments.gpt2_sentiment | gpt2_rlvr`: the
                   algorithms at GPT-2 scale, --preset tiny (CPU) or gpt2, accelerate  (lesson 17)
    bench          `python -m minirl.bench` (throughput, algos.grpo's step, --dpo);
    bench_trl_grpo `python -m minirl.bench_trl_grpo` (that GRPO step against TRL's)
    bench_trl_dpo  `python -m minirl.bench_trl_dpo` (a DPO epoch against TRL's)
"""
__version__ = "0.1.0"

import os as _os
import sys as _sys


def _tune_glibc_malloc() -> bool:
    """Keep freed memory in the process instead of handing it back to the OS after every op.

    glibc serves allocations above a threshold (128 KiB, growing to at most 32 MiB) with fresh
    mmap calls and returns freed heap memory above another threshold; a float64 forward pass over
    a few hundred sequences allocates and frees tens of MB per layer, so each op pays for new,
    zeroed pages. Raising both thresholds to 1 GiB makes a 586-row log-prob pass of the tiny model
    about 1.7x faster here, with bitwise the same results (only where memory comes from changes).
    Linux with glibc only; a no-op elsewhere. Switch it off with MINIRL_MALLOC_TUNING=0.
    Returns whether both settings were applied."""
    if _os.environ.get("MINIRL_MALLOC_TUNING", "1") == "0" or not _sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
        return bool(libc.mallopt(m_mmap_threshold, 1 << 30)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False


MALLOC_TUNED = _tune_glibc_malloc()
