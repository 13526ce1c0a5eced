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
    bandit, dpo_bandit, toy_mdp   exactly solvable toys                              (lessons 01, 06, 07, 10)
  shared RL plumbing (every algorithm)
    rollout        sample -> Samples, make_reference, generators, scorers, per-token
                   and sequence KL                                                     (lessons 04, 08, 13)
    training       optimizer_step (token-weighted accumulation, clipping, autocast,
                   device), checkpoints with RNG states (bitwise resume), run log      (issue 9)
    evaluation     evaluate_policy: the reward-KL point with standard errors          (lessons 08-12)
  algorithms
    reward_model   preference pairs from a hidden gold, reward-model training/eval    (lesson 05)
    rlhf           PPO-RLHF: rollout, KL-penalized rewards, update, train_ppo          (lesson 08)
    bon            best-of-n, its exact distribution and KL, rejection sampling        (lesson 09)
    dpo            sequence-level DPO: concatenated log-probs, training loop           (lessons 10-12)
    algos.grpo     RLOO / GRPO / Dr. GRPO / DAPO / GSPO: one config, one step, one loop (lesson 13)
  tools
    bench          `python -m minirl.bench` (throughput, a GRPO step);
    bench_trl_grpo `python -m minirl.bench_trl_grpo` (the same GRPO step in TRL)
"""
__version__ = "0.1.0"
