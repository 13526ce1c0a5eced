"""minirl: the small library behind the course. One concept per module; each module's docstring
names the lesson that derives it.

    paths       repo-relative DATA_DIR, FIGURES_DIR
    utils       seeding, device, quiet progress bars, timers
    plotting    the house style and save_figure
    checks      input validation shared by every public function
    masks       masked sum / mean / var
    bandit      K-armed bandit, softmax policy, the KL-regularized optimum        (lesson 01)
    kl          k1/k2/k3 estimators, exact categorical KL, KL controllers         (lessons 02, 08)
    losses      REINFORCE, PPO, Bradley-Terry, DPO family, GRPO family           (lessons 01, 04-13)
    lm          per-token log-probs, entropy, generation for any causal LM        (lessons 03, 04)
"""
__version__ = "0.1.0"
