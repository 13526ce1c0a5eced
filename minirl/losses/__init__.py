"""Losses, each a pure function on tensors returning a scalar to minimize.

Split by concept: `policy_gradient` (REINFORCE, PPO), `preference` (Bradley-Terry, DPO family),
`group` (RLOO / GRPO family). Import from here: `from minirl.losses import reinforce_loss`.
"""
from .policy_gradient import reinforce_loss

__all__ = ["reinforce_loss"]
