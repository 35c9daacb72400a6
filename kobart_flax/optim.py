"""Optimizer: the original KoBART recipe in optax.

AdamW with weight decay off biases and LayerNorm parameters, linear warmup to the peak
learning rate then linear decay to zero, and gradient clipping by global norm.
"""

from __future__ import annotations

import optax
from flax import traverse_util

# Leaves that take no weight decay: every bias (final_logits_bias included) and the
# LayerNorm gains. The original excluded 'bias', 'LayerNorm.bias' and 'LayerNorm.weight'.
NO_DECAY_LEAVES = ("bias", "scale", "final_logits_bias")


def learning_rate_schedule(
    peak_learning_rate: float, total_steps: int, warmup_ratio: float
) -> optax.Schedule:
    warmup_steps = int(total_steps * warmup_ratio)
    return optax.join_schedules(
        [
            optax.linear_schedule(0.0, peak_learning_rate, max(warmup_steps, 1)),
            optax.linear_schedule(peak_learning_rate, 0.0, max(total_steps - warmup_steps, 1)),
        ],
        boundaries=[warmup_steps],
    )


def weight_decay_mask(params) -> dict:
    """True for the leaves that AdamW should decay."""
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({path: path[-1] not in NO_DECAY_LEAVES for path in flat})


def make_optimizer(
    schedule: optax.Schedule, weight_decay: float, max_grad_norm: float
) -> optax.GradientTransformation:
    return optax.chain(
        optax.clip_by_global_norm(max_grad_norm),
        optax.adamw(
            schedule, b1=0.9, b2=0.999, eps=1e-8, weight_decay=weight_decay, mask=weight_decay_mask
        ),
    )
