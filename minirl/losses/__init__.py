"""Losses, each a pure function on tensors returning a scalar to minimize.

Split by concept: `policy_gradient` (REINFORCE, PPO), `preference` (Bradley-Terry, DPO family),
`group` (RLOO / GRPO family). Import from here: `from minirl.losses import reinforce_loss`.
"""
from .policy_gradient import ppo_policy_loss, ppo_value_loss, reinforce_loss
from .preference import bradley_terry_loss, cpo_loss, dpo_loss, ipo_loss, kto_loss, orpo_loss, ranking_to_pairs, rrhf_loss, simpo_loss  # noqa: F401
from .sft import sft_loss  # noqa: F401

__all__ = ["reinforce_loss", "ppo_policy_loss", "ppo_value_loss"]
