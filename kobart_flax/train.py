"""The training loop: data, model, jitted steps over a mesh, logging, evaluation.

Order of work in :func:`train_and_evaluate`:
1. Validate the config against the devices (before anything compiles).
2. Read, validate and tokenize the data (every host reads all of it and slices its rows).
3. Build the model: pretrained weights or random init.
4. Create the train state directly in its sharded layout (jit with out_shardings).
5. Loop: prefetched batches -> global arrays -> train_step; log; evaluate every N steps.
6. Save the final model next to the run (process 0).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from transformers import BartConfig

from kobart_flax import batching, optim, sharding, steps
from kobart_flax.config import Config, ConfigError, ModelConfig, config_to_dict, validate
from kobart_flax.data_io import DataError, read_examples
from kobart_flax.metrics_logger import MetricsLogger
from kobart_flax.pretrained import FlaxBartForConditionalGeneration, init_params
from kobart_flax.tokenization import EncodedExample, encode_examples, load_tokenizer

logger = logging.getLogger(__name__)

FINAL_MODEL_DIR = "final_model"


@dataclasses.dataclass
class TrainResult:
    train_losses: list[float]  # one per optimizer step
    eval_losses: list[tuple[int, float]]  # (step, loss) per evaluation
    state: steps.TrainState
    model: FlaxBartForConditionalGeneration  # holds the final params


def build_model(model_config: ModelConfig, tokenizer) -> FlaxBartForConditionalGeneration:
    """Pretrained weights if ``model.pretrained`` is set, else a random BART of the given size."""
    dtype = jnp.dtype(model_config.dtype)
    if model_config.pretrained:
        model = FlaxBartForConditionalGeneration.from_pretrained(model_config.pretrained, dtype)
        if len(tokenizer) > model.config.vocab_size:
            raise ConfigError(
                f"model.tokenizer has {len(tokenizer)} tokens but the model "
                f"{model_config.pretrained} embeds only {model.config.vocab_size}"
            )
        return model
    if model_config.vocab_size < len(tokenizer):
        raise ConfigError(
            f"model.vocab_size={model_config.vocab_size} is smaller than the tokenizer "
            f"{model_config.tokenizer} ({len(tokenizer)} tokens)"
        )
    config = BartConfig(
        vocab_size=model_config.vocab_size,
        d_model=model_config.d_model,
        encoder_layers=model_config.encoder_layers,
        decoder_layers=model_config.decoder_layers,
        encoder_attention_heads=model_config.attention_heads,
        decoder_attention_heads=model_config.attention_heads,
        encoder_ffn_dim=model_config.ffn_dim,
        decoder_ffn_dim=model_config.ffn_dim,
        max_position_embeddings=model_config.max_position_embeddings,
        dropout=model_config.dropout,
        attention_dropout=model_config.attention_dropout,
        scale_embedding=False,
        # KoBART's conventions: the decoder starts from </s>, and ends on it.
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        decoder_start_token_id=tokenizer.eos_token_id,
        forced_eos_token_id=tokenizer.eos_token_id,
    )
    # Params are created later, directly on the devices (see create_sharded_state).
    return FlaxBartForConditionalGeneration(config, dtype, params={})


def load_encoded(path: str, config: Config, tokenizer) -> list[EncodedExample]:
    examples = read_examples(path, config.data.bad_rows)
    logger.info("read %d examples from %s", len(examples), path)
    return encode_examples(
        tokenizer, examples, config.data.max_source_length, config.data.max_target_length
    )


def create_sharded_state(
    model: FlaxBartForConditionalGeneration,
    optimizer: optax.GradientTransformation,
    mesh: jax.sharding.Mesh,
    seed: int,
) -> tuple[steps.TrainState, steps.TrainState]:
    """The train state, created on the devices in its final layout.

    Returns (state, state shardings). Random init runs inside jit, so no host ever holds a
    whole copy; pretrained params enter as host arrays once.
    """
    init_key, dropout_key = jax.random.split(jax.random.key(seed))

    def make_state(params):
        if params is None:
            params = init_params(model.module, init_key)
        return steps.create_train_state(params, optimizer, dropout_key)

    host_params = model.params or None
    state_shape = jax.eval_shape(make_state, host_params)
    state_sharding = jax.tree.map(lambda _: sharding.replicated(mesh), state_shape)
    state = jax.jit(make_state, out_shardings=state_sharding)(host_params)
    return state, state_sharding


def train_and_evaluate(config: Config) -> TrainResult:
    validate(config, device_count=jax.device_count(), process_count=jax.process_count())
    train_config, data_config = config.train, config.data
    process_index, process_count = jax.process_index(), jax.process_count()

    tokenizer = load_tokenizer(config.model.tokenizer)
    train_examples = load_encoded(data_config.train_path, config, tokenizer)
    eval_examples = load_encoded(data_config.eval_path, config, tokenizer)
    steps_per_epoch = batching.num_train_batches(len(train_examples), train_config.batch_size)
    if steps_per_epoch == 0:
        raise DataError(
            f"{data_config.train_path}: {len(train_examples)} examples, fewer than one batch "
            f"(train.batch_size={train_config.batch_size})"
        )
    total_steps = steps_per_epoch * train_config.num_epochs
    if train_config.max_steps:
        total_steps = min(total_steps, train_config.max_steps)

    model = build_model(config.model, tokenizer)
    pad_id = model.config.pad_token_id
    start_id = model.config.decoder_start_token_id
    schedule = optim.learning_rate_schedule(
        train_config.learning_rate, total_steps, train_config.warmup_ratio
    )
    optimizer = optim.make_optimizer(
        schedule, train_config.weight_decay, train_config.max_grad_norm
    )
    mesh = sharding.make_data_mesh()
    state, state_sharding = create_sharded_state(model, optimizer, mesh, train_config.seed)
    param_count = sum(leaf.size for leaf in jax.tree.leaves(state.params))
    logger.info(
        "%s parameters, %d train / %d eval examples, %d steps (%d per epoch), %d devices",
        f"{param_count:,}",
        len(train_examples),
        len(eval_examples),
        total_steps,
        steps_per_epoch,
        jax.device_count(),
    )

    batch_sharding = sharding.batch_sharding(mesh)
    metrics_sharding = sharding.replicated(mesh)
    train_step = jax.jit(
        functools.partial(
            steps.train_step,
            apply_fn=model.module.apply,
            optimizer=optimizer,
            schedule=schedule,
            grad_accum_steps=train_config.grad_accum_steps,
            label_smoothing=train_config.label_smoothing,
        ),
        in_shardings=(state_sharding, batch_sharding),
        out_shardings=(state_sharding, metrics_sharding),
        donate_argnums=(0,),
    )
    eval_step = jax.jit(
        functools.partial(steps.eval_step, apply_fn=model.module.apply),
        in_shardings=(state_sharding.params, batch_sharding),
        out_shardings=metrics_sharding,
    )
    batch_options = dict(
        batch_size=train_config.batch_size,
        source_buckets=data_config.source_buckets,
        target_buckets=data_config.target_buckets,
        pad_token_id=pad_id,
        decoder_start_token_id=start_id,
        process_index=process_index,
        process_count=process_count,
    )

    def evaluate(params) -> float:
        batches = batching.eval_batches(eval_examples, **batch_options)
        if train_config.eval_max_batches:
            batches = itertools.islice(batches, train_config.eval_max_batches)
        return evaluation_loss(eval_step, params, batches, mesh)

    def epoch_batches(epoch: int) -> Iterator[dict[str, np.ndarray]]:
        return batching.train_batches(
            train_examples, seed=train_config.seed, epoch=epoch, **batch_options
        )

    train_losses: list[float] = []
    eval_losses: list[tuple[int, float]] = []
    with MetricsLogger(
        train_config.workdir, enabled=process_index == 0, total_steps=total_steps
    ) as metrics_logger:
        metrics_logger.log_hparams(config_to_dict(config))
        pending: list[dict[str, jax.Array]] = []
        step = 0
        for epoch in range(train_config.num_epochs):
            for local_batch in prefetched(epoch_batches(epoch), data_config.prefetch):
                if step >= total_steps:
                    break
                state, metrics = train_step(state, sharding.global_batch(local_batch, mesh))
                step += 1
                # Metrics stay on device until a log step, so the host never waits per step.
                pending.append(metrics)
                if step % train_config.log_every == 0 or step == total_steps:
                    interval = jax.device_get(pending)
                    pending = []
                    train_losses.extend(float(m["loss"]) for m in interval)
                    metrics_logger.log_train(step, summarize_interval(interval, epoch))
                if (train_config.eval_every and step % train_config.eval_every == 0) or (
                    step == total_steps
                ):
                    eval_loss = evaluate(state.params)
                    eval_losses.append((step, eval_loss))
                    metrics_logger.log_eval(step, {"loss": eval_loss})

    model.params = state.params
    if process_index == 0:
        output = Path(train_config.workdir) / FINAL_MODEL_DIR
        model.save_pretrained(output)
        tokenizer.save_pretrained(output)
        logger.info("saved the final model to %s", output)
    return TrainResult(train_losses, eval_losses, state, model)


def prefetched(batches: Iterator, size: int) -> Iterator:
    return batching.prefetch(batches, size) if size > 0 else batches


def summarize_interval(interval: Sequence[dict[str, np.ndarray]], epoch: int) -> dict[str, float]:
    """Token-weighted mean loss over the steps since the last log line, plus totals."""
    target_tokens = np.array([m["target_tokens"] for m in interval])
    losses = np.array([m["loss"] for m in interval])
    return {
        "loss": float(np.sum(losses * target_tokens) / max(np.sum(target_tokens), 1.0)),
        "lr": float(interval[-1]["learning_rate"]),
        "grad_norm": float(interval[-1]["grad_norm"]),
        "epoch": float(epoch),
        "tokens": float(sum(m["source_tokens"] + m["target_tokens"] for m in interval)),
    }


def evaluation_loss(eval_step, params, batches, mesh) -> float:
    """Mean token loss over all eval batches; dummy padding rows carry zero weight."""
    totals = []
    for local_batch in batches:
        local_batch.pop("example_index")
        totals.append(eval_step(params, sharding.global_batch(local_batch, mesh)))
    totals = jax.device_get(totals)
    tokens = sum(t["tokens"] for t in totals)
    return float(sum(t["loss_sum"] for t in totals) / max(tokens, 1.0))
