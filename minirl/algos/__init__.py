"""Training algorithms built on the shared pieces of minirl, one module each.

    grpo   GRPO and its critic-free family (REINFORCE with a baseline, RLOO, Dr. GRPO, DAPO's
           token-level loss and clip-higher, GSPO's sequence ratio) as one loop: G samples per
           prompt, a verifiable reward, group-relative advantages, `minirl.losses.grpo_loss`
           (lesson 13).

Import the module: `from minirl.algos import grpo`, then `grpo.GRPOConfig`, `grpo.train_grpo`.
"""
