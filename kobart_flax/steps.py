"""Train state, loss, and the pure ``train_step`` / ``eval_step`` functions.

Both steps are plain functions of arrays; :mod:`kobart_flax.train` jits them with
explicit shardings. Losses are summed over real (non-pad) target tokens and divided by
the token count of the whole global batch, so the result does not depend on how the
batch is split across devices, hosts or accumulation micro-batches.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax

Batch = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer steps taken
    params: dict
    opt_state: optax.OptState
    dropout_key: jax.Array  # base key; step k uses fold_in(dropout_key, k)


def create_train_state(
    params: dict, optimizer: optax.GradientTransformation, dropout_key: jax.Array
) -> TrainState:
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        dropout_key=dropout_key,
    )


def token_losses(logits: jax.Array, labels: jax.Array, label_smoothing: float) -> jax.Array:
    """Per-token cross entropy in float32. [batch, len, vocab], [batch, len] --> [batch, len]."""
    logits = logits.astype(jnp.float32)
    if label_smoothing == 0.0:
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)


def summed_loss(
    apply_fn: Callable,
    params: dict,
    batch: Batch,
    label_smoothing: float,
    dropout_key: jax.Array | None,
) -> tuple[jax.Array, jax.Array]:
    """(sum of token losses, number of real target tokens) for one (micro-)batch."""
    train = dropout_key is not None
    logits = apply_fn(
        {"params": params},
        batch["input_ids"],
        batch["attention_mask"],
        batch["decoder_input_ids"],
        batch["decoder_attention_mask"],
        # Packed batches (kobart_flax.packing) carry segment ids; bucketed ones do not.
        segment_ids=batch.get("segment_ids"),
        decoder_segment_ids=batch.get("decoder_segment_ids"),
        deterministic=not train,
        rngs={"dropout": dropout_key} if train else {},
    )
    weights = batch["decoder_attention_mask"].astype(jnp.float32)
    losses = token_losses(logits, batch["labels"], label_smoothing)
    return jnp.sum(losses * weights), jnp.sum(weights)


def strided_micro_batches(x: jax.Array, accum_steps: int) -> jax.Array:
    """Split a global batch so that row r goes to micro-batch r % accum_steps.

    The batch is sharded in contiguous blocks of rows, one block per data shard. Taking
    every accum_steps-th row gives each micro-batch the same number of rows from every
    shard, already where they live; contiguous micro-batches would put each one on a
    subset of the devices and make XLA move rows between them every step.
    """
    # [batch, ...] --> [batch / accum, accum, ...] --> [accum, batch / accum, ...]
    rows = x.reshape((x.shape[0] // accum_steps, accum_steps) + x.shape[1:])
    return jnp.swapaxes(rows, 0, 1)


def train_step(
    state: TrainState,
    batch: Batch,
    *,
    apply_fn: Callable,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    grad_accum_steps: int,
    label_smoothing: float,
    frozen: tuple[str, ...] = (),
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step over a global batch, accumulated over micro-batches.

    ``frozen`` top-level params (e.g. ``final_logits_bias``) get a zero gradient, so AdamW
    leaves them as they are, and XLA drops the work of their gradient.
    """
    step_key = jax.random.fold_in(state.dropout_key, state.step)

    def micro_batch_grads(carry, micro):
        index, micro_batch = micro
        micro_key = jax.random.fold_in(step_key, index)

        def loss_sum_fn(params):
            params = {
                name: jax.lax.stop_gradient(value) if name in frozen else value
                for name, value in params.items()
            }
            return summed_loss(apply_fn, params, micro_batch, label_smoothing, micro_key)

        (loss_sum, tokens), grads = jax.value_and_grad(loss_sum_fn, has_aux=True)(state.params)
        grad_acc, loss_acc, token_acc = carry
        grad_acc = jax.tree.map(jnp.add, grad_acc, grads)
        return (grad_acc, loss_acc + loss_sum, token_acc + tokens), None

    micro_batches = jax.tree.map(lambda x: strided_micro_batches(x, grad_accum_steps), batch)
    zeros = jax.tree.map(jnp.zeros_like, state.params)
    (grad_sum, loss_sum, tokens), _ = jax.lax.scan(
        micro_batch_grads,
        (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32)),
        (jnp.arange(grad_accum_steps), micro_batches),
    )
    # Mean over every real token of the global batch, whatever the split.
    token_count = jnp.maximum(tokens, 1.0)
    grads = jax.tree.map(lambda g: g / token_count, grad_sum)

    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "loss": loss_sum / token_count,
        "grad_norm": optax.tree.norm(grads),
        "learning_rate": schedule(state.step),
        "target_tokens": tokens,
        "source_tokens": jnp.sum(batch["attention_mask"]).astype(jnp.float32),
    }
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, metrics


def eval_step(params: dict, batch: Batch, *, apply_fn: Callable) -> dict[str, jax.Array]:
    """Summed loss and token count; the caller divides after summing over batches."""
    loss_sum, tokens = summed_loss(apply_fn, params, batch, 0.0, None)
    return {"loss_sum": loss_sum, "tokens": tokens}
