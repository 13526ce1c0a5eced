"""minirl: the small library behind the course. One concept per module; each module's docstring
names the lesson that derives it.

    paths          repo-relative DATA_DIR, FIGURES_DIR                                (all)
    utils          seeding, device, quiet progress bars, timers                       (all)
    plotting       the house style and save_figure                                    (all)
    checks         input validation shared by every public function                   (all)
    masks          masked sum / mean / var                                            (all)
    notebook_tools execute a lesson in a fresh kernel and time it                     (all)
    bandit         K-armed bandit, softmax policy, the KL-regularized optimum         (lesson 01)
    kl             k1/k2/k3 estimators, exact categorical KL, KL controllers          (lessons 02, 08)
    world          the tiny world: reviews, arithmetic, instructions, gold scorer     (lesson 03)
    tokenizer      byte-level BPE for the tiny world, batch encoders                  (lesson 03)
    models         tiny GPT-2 config, load_policy (local folder or hub), scalar heads (lessons 03, 05, 08)
    lm             generation with sampling log-probs, teacher-forced log-probs       (lessons 03, 04)
    rewards        lexicon sentiment, review reward, arithmetic verifiers             (lessons 03, 04)
    losses         REINFORCE, PPO, SFT, Bradley-Terry, DPO family                     (lessons 01, 03-11)
    reward_model   preference pairs from a hidden gold, reward-model training/eval    (lesson 05)
    advantages     GAE, whitening, group baselines (GRPO, Dr. GRPO, RLOO)             (lessons 06, 13)
    toy_mdp        an exactly solvable token chain for GAE and PPO                    (lessons 06, 07)
    rlhf           PPO-RLHF in short pieces: rollout, KL-penalized rewards, update     (lesson 08)
    bon            best-of-n, its exact distribution and KL, rejection sampling        (lesson 09)
    dpo_bandit     DPO on an enumerable bandit (recovers pi*)                          (lesson 10)
    dpo            sequence-level DPO: concatenated log-probs, training loop           (lesson 10)
    bench          `python -m minirl.bench`: throughput on this machine
"""
__version__ = "0.1.0"
