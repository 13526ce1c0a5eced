"""Losses, each a pure function on tensors returning a scalar to minimize.

Split by concept: `policy_gradient` (REINFORCE, PPO policy and value losses; lessons 04, 07),
`grpo` (the critic-free GRPO family: GRPO, BNPO, Dr. GRPO, DAPO, GSPO as switches of `grpo_loss`;
lesson 13), `preference` (Bradley-Terry and the DPO family: DPO, IPO, KTO, ORPO, SimPO, CPO, RRHF; lessons 05,
10, 11) and `sft` (the masked negative log-likelihood; lesson 03). Import from here:
`from minirl.losses import reinforce_loss`. Group-relative baselines (RLOO, GRPO) are advantages,
in `minirl.advantages` (with DAPO's overlong penalty and dynamic-sampling filter).
"""
from .grpo import grpo_loss
from .policy_gradient import ppo_policy_loss, ppo_value_loss, reinforce_loss
from .preference import (
    bradley_terry_loss,
    cpo_loss,
    dpo_loss,
    ipo_loss,
    kto_loss,
    orpo_loss,
    ranking_to_pairs,
    rrhf_loss,
    simpo_loss,
)
from .sft import sft_loss

__all__ = [
    "reinforce_loss", "ppo_policy_loss", "ppo_value_loss",
    "grpo_loss",
    "bradley_terry_loss", "ranking_to_pairs", "dpo_loss", "ipo_loss", "kto_loss", "orpo_loss",
    "simpo_loss", "cpo_loss", "rrhf_loss",
    "sft_loss",
]
