"""kobart-flax's train step, built and placed the way kobart_flax/train.py builds it.

Same optimizer recipe, the state created sharded on the devices (``create_sharded_state``),
the step the training loop runs (``train.make_train_step``: sharded, state donated), and
batches assembled with ``sharding.global_batch``.
"""

import jax
import jax.numpy as jnp
import numpy as np
from transformers import BartConfig

from kobart_flax import optim, sharding, train
from kobart_flax.pretrained import FlaxBartForConditionalGeneration

LEARNING_RATE = 3e-5
WARMUP_RATIO = 0.1
WEIGHT_DECAY = 0.01
MAX_GRAD_NORM = 1.0


class Trainer:
    """A train state and the jitted step; ``step`` trains on one host batch and waits."""

    def __init__(
        self, config: BartConfig, total_steps: int, compute_dtype: str, seed: int = 0
    ) -> None:
        self.mesh = sharding.make_data_mesh()
        model = FlaxBartForConditionalGeneration(config, jnp.dtype(compute_dtype), params={})
        schedule = optim.learning_rate_schedule(LEARNING_RATE, total_steps, WARMUP_RATIO)
        optimizer = optim.make_optimizer(schedule, WEIGHT_DECAY, MAX_GRAD_NORM)
        self.state, state_sharding = train.create_sharded_state(model, optimizer, self.mesh, seed)
        self.jitted_step = train.make_train_step(
            model,
            optimizer,
            schedule,
            state_sharding,
            self.mesh,
            grad_accum_steps=1,
            label_smoothing=0.0,
            freeze_final_logits_bias=True,  # as the PyTorch baseline (a buffer there)
        )

    def place(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        return sharding.global_batch(batch, self.mesh)

    def step(self, batch: dict[str, np.ndarray]) -> float:
        self.state, metrics = self.jitted_step(self.state, self.place(batch))
        # Fetching the loss waits for the step (and the donated state's update) to finish.
        return float(metrics["loss"])

    def cost_analysis(self, batch: dict[str, np.ndarray]) -> dict:
        """XLA's cost analysis of the step's HLO for this batch's shapes.

        From the lowered program, so it costs no second compilation; its FLOP count is the
        same as the optimized program's, which rematerializes nothing on these sizes.
        """
        return self.jitted_step.lower(self.state, self.place(batch)).cost_analysis()
