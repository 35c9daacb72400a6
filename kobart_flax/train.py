"""The training loop: data, model, jitted steps over a mesh, checkpoints, logging, evaluation.

Order of work in :func:`train_and_evaluate`:
1. Validate the config against the devices (before anything compiles).
2. Read, validate and tokenize the data (every host reads all of it and slices its rows).
3. Start from the first of (see :mod:`kobart_flax.checkpoint`): the newest checkpoint in
   ``<workdir>/checkpoints`` (exact resume: state, data position, history),
   ``train.init_checkpoint`` (params only), ``model.pretrained``, random init. The train state
   is created or restored directly in its sharded layout.
4. Loop: prefetched batches -> global arrays -> train_step; log; evaluate every N steps;
   checkpoint every N steps, at each evaluation when best-K is on, at the end, and after a
   preemption notice (SIGTERM), after which the run stops cleanly.
5. Save the final model next to the run (process 0).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import logging
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from transformers import BartConfig

from kobart_flax import (
    batching,
    checkpoint,
    compile_cache,
    distributed,
    loading,
    optim,
    sharding,
    steps,
    storage,
    token_cache,
)
from kobart_flax.config import (
    EVAL_LOSS,
    Config,
    ConfigError,
    ModelConfig,
    TrainConfig,
    check_positions,
    config_to_dict,
    validate,
)
from kobart_flax.data_io import DataError, Example, read_examples
from kobart_flax.metrics_logger import MetricsLogger
from kobart_flax.pretrained import FlaxBartForConditionalGeneration, init_params
from kobart_flax.profiling import StepTrace
from kobart_flax.rouge_eval import RougeEvaluator
from kobart_flax.tokenization import EncodedExample, encode_examples, load_tokenizer
from kobart_flax.train_batches import TrainBatches, global_batches

logger = logging.getLogger(__name__)

FINAL_MODEL_DIR = "final_model"
TOKEN_CACHE_DIR = "token_cache"  # under train.workdir, unless data.cache_dir names another


class TrainingDiverged(RuntimeError):
    """The loss or gradient norm became NaN or infinite; the run stopped before saving it."""


@dataclasses.dataclass
class TrainResult:
    # One per optimizer step from step 1, and (step, loss) per evaluation; a resumed run
    # includes those of the steps before it, restored from the checkpoint.
    train_losses: list[float]
    eval_losses: list[tuple[int, float]]
    state: steps.TrainState
    model: FlaxBartForConditionalGeneration  # holds the final params
    start_step: int = 0  # the step this run resumed from (0 = a fresh start)
    preempted: bool = False  # stopped by a preemption notice, after saving a checkpoint
    # (step, every metric) per evaluation: eval_loss, and rouge1/2/L where ROUGE ran.
    evaluations: list[tuple[int, dict[str, float]]] = dataclasses.field(default_factory=list)


def build_model(model_config: ModelConfig, tokenizer) -> FlaxBartForConditionalGeneration:
    """Pretrained weights if ``model.pretrained`` is set, else a random BART of the given size."""
    dtype = jnp.dtype(model_config.dtype)
    if model_config.pretrained:
        return load_saved_model(model_config.pretrained, "model.pretrained", dtype, tokenizer).model
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
    data_config = config.data
    examples = load_examples(path, config)
    lengths = (data_config.max_source_length, data_config.max_target_length)
    if not data_config.token_cache:
        return encode_examples(tokenizer, examples, *lengths)
    cache_dir = data_config.cache_dir or f"{config.train.workdir}/{TOKEN_CACHE_DIR}"
    return token_cache.cached_encode(examples, tokenizer, *lengths, cache_dir)


def load_examples(path: str, config: Config) -> list[Example]:
    examples = read_examples(
        path,
        config.data.bad_rows,
        text_column=config.data.text_column,
        summary_column=config.data.summary_column,
    )
    logger.info("read %d examples from %s", len(examples), path)
    return examples


def _state_factory(
    model: FlaxBartForConditionalGeneration, optimizer: optax.GradientTransformation, seed: int
):
    init_key, dropout_key = jax.random.split(jax.random.key(seed))

    def make_state(params):
        if params is None:
            params = init_params(model.module, init_key)
        return steps.create_train_state(params, optimizer, dropout_key)

    return make_state


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
    make_state = _state_factory(model, optimizer, seed)
    host_params = model.params or None
    state_shape = jax.eval_shape(make_state, host_params)
    state_sharding = sharding.state_shardings(state_shape, mesh)
    state = jax.jit(make_state, out_shardings=state_sharding)(host_params)
    return state, state_sharding


def make_train_step(
    model: FlaxBartForConditionalGeneration,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    state_sharding: steps.TrainState,
    mesh: jax.sharding.Mesh,
    *,
    grad_accum_steps: int,
    label_smoothing: float,
    freeze_final_logits_bias: bool,
):
    """``steps.train_step`` jitted for the mesh: (state, global batch) -> (state, metrics).

    The state keeps its sharding and is donated (updated in place); metrics come back
    replicated. The training loop and the benchmarks both run this one function.
    """
    return jax.jit(
        functools.partial(
            steps.train_step,
            apply_fn=model.module.apply,
            optimizer=optimizer,
            schedule=schedule,
            grad_accum_steps=grad_accum_steps,
            label_smoothing=label_smoothing,
            frozen=("final_logits_bias",) if freeze_final_logits_bias else (),
        ),
        in_shardings=(state_sharding, sharding.batch_sharding(mesh)),
        out_shardings=(state_sharding, sharding.replicated(mesh)),
        donate_argnums=(0,),
    )


def abstract_sharded_state(
    model: FlaxBartForConditionalGeneration,
    optimizer: optax.GradientTransformation,
    mesh: jax.sharding.Mesh,
    seed: int,
) -> tuple[steps.TrainState, steps.TrainState]:
    """(ShapeDtypeStructs carrying the target shardings, shardings) of the train state:
    the layout a checkpoint is restored into, whatever mesh wrote it."""
    state_shape = jax.eval_shape(_state_factory(model, optimizer, seed), None)
    state_sharding = sharding.state_shardings(state_shape, mesh)
    abstract = jax.tree.map(
        lambda leaf, leaf_sharding: jax.ShapeDtypeStruct(
            leaf.shape, leaf.dtype, sharding=leaf_sharding
        ),
        state_shape,
        state_sharding,
    )
    return abstract, state_sharding


def load_saved_model(
    source: str,
    field: str,
    dtype: jnp.dtype,
    tokenizer,
    sharding: jax.sharding.Sharding | None = None,
    checkpoint_only: bool = False,
) -> loading.LoadedModel:
    """The model a config ``field`` names, without its tokenizer (``model.tokenizer`` is the
    run's); a source that cannot be loaded is a ConfigError naming the field."""
    try:
        resolved = loading.resolve_source(source)
        if checkpoint_only and resolved.kind != loading.CHECKPOINT:
            raise ConfigError(
                f"{field}={source}: not an Orbax checkpoint (a run's workdir, its checkpoints/ "
                "or one step directory in it); start from a saved model with model.pretrained"
            )
        loaded = loading.load_model(resolved, dtype, sharding=sharding, with_tokenizer=False)
    except loading.ModelLoadError as error:
        raise ConfigError(f"{field}: {error}") from error
    check_vocabulary(loaded.model, tokenizer, f"{field}={source}")
    return loaded


def check_vocabulary(model: FlaxBartForConditionalGeneration, tokenizer, origin: str) -> None:
    if len(tokenizer) > model.config.vocab_size:
        raise ConfigError(
            f"model.tokenizer has {len(tokenizer)} tokens but the model of {origin} embeds only "
            f"{model.config.vocab_size}"
        )


def pretrained_positions(name_or_path: str) -> int:
    """``max_position_embeddings`` of a ``model.pretrained``, read from its config alone."""
    try:
        return loading.read_model_config(name_or_path).max_position_embeddings
    except loading.ModelLoadError as error:
        raise ConfigError(f"model.pretrained: {error}") from error


@dataclasses.dataclass
class _Start:
    """Where a run starts: fresh (step 0) or resumed from its own checkpoint."""

    model: FlaxBartForConditionalGeneration
    state: steps.TrainState
    state_sharding: steps.TrainState
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # of the next batch to train on
    train_losses: list[float] = dataclasses.field(default_factory=list)
    evaluations: list[tuple[int, dict[str, float]]] = dataclasses.field(default_factory=list)


def initialize(
    config: Config,
    tokenizer,
    optimizer: optax.GradientTransformation,
    mesh: jax.sharding.Mesh,
    checkpointer: checkpoint.TrainCheckpointer,
    steps_per_epoch: int,
    total_steps: int,
) -> _Start:
    """The resume order of :mod:`kobart_flax.checkpoint`, steps 1 to 4."""
    dtype = jnp.dtype(config.model.dtype)
    seed = config.train.seed

    # 1. This run's newest readable checkpoint: continue exactly where it stopped.
    def abstract_state_for(metadata: dict) -> steps.TrainState:
        model = loading.model_from_metadata(metadata, dtype)
        check_vocabulary(model, tokenizer, f"the checkpoint in {checkpointer.directory}")
        check_positions(
            config.data,
            model.config.max_position_embeddings,
            f"the checkpoint in {checkpointer.directory}",
        )
        return abstract_sharded_state(model, optimizer, mesh, seed)[0]

    restored = checkpointer.restore_newest(abstract_state_for)
    if restored is not None:
        model = loading.model_from_metadata(restored.metadata, dtype)
        _, state_sharding = abstract_sharded_state(model, optimizer, mesh, seed)
        epoch, batch_in_epoch = resume_position(restored, config, steps_per_epoch, total_steps)
        logger.info(
            "resuming from %s at step %d (epoch %d, batch %d)",
            checkpointer.directory / str(restored.step),
            restored.step,
            epoch,
            batch_in_epoch,
        )
        return _Start(
            model,
            restored.state,
            state_sharding,
            restored.step,
            epoch,
            batch_in_epoch,
            [float(loss) for loss in restored.history["train_losses"]],
            [(int(step), dict(metrics)) for step, metrics in restored.history["evaluations"]],
        )

    # 2. Params of another run: fresh optimizer, step 0.
    if config.train.init_checkpoint:
        loaded = load_saved_model(
            config.train.init_checkpoint,
            "train.init_checkpoint",
            dtype,
            tokenizer,
            sharding=sharding.replicated(mesh),
            checkpoint_only=True,
        )
        model = loaded.model
        check_positions(
            config.data, model.config.max_position_embeddings, config.train.init_checkpoint
        )
        logger.info(
            "initialized the params from %s (step %d)",
            config.train.init_checkpoint,
            loaded.metadata["step"],
        )
    else:
        # 3. and 4. Pretrained weights, or random init.
        model = build_model(config.model, tokenizer)
    state, state_sharding = create_sharded_state(model, optimizer, mesh, seed)
    return _Start(model, state, state_sharding)


def resume_position(
    restored: checkpoint.Restored, config: Config, steps_per_epoch: int, total_steps: int
) -> tuple[int, int]:
    """(epoch, batch in epoch) of the next batch, as the checkpoint recorded it."""
    position = restored.data_iterator
    epoch, batch_in_epoch = int(position["epoch"]), int(position["batch_in_epoch"])
    if position["steps_per_epoch"] != steps_per_epoch or position["seed"] != config.train.seed:
        logger.warning(
            "checkpoint step %d was written with %d batches per epoch and seed %d, this run has "
            "%d and %d: the data order does not continue exactly",
            restored.step,
            position["steps_per_epoch"],
            position["seed"],
            steps_per_epoch,
            config.train.seed,
        )
        if batch_in_epoch >= steps_per_epoch:
            epoch, batch_in_epoch = epoch + 1, 0
    if restored.metadata.get("total_steps") != total_steps:
        logger.warning(
            "checkpoint step %d was written by a run of %s steps, this run has %d: the "
            "learning-rate schedule changes",
            restored.step,
            restored.metadata.get("total_steps"),
            total_steps,
        )
    return epoch, batch_in_epoch


def train_and_evaluate(config: Config) -> TrainResult:
    # The topology first: on the wrong one, every later error would mislead.
    config.mesh.check_topology(
        jax.process_count(), jax.device_count(), platform=jax.devices()[0].platform
    )
    validate(config, device_count=jax.device_count(), process_count=jax.process_count())
    # Before anything in the workdir is read or written: token cache, checkpoints, logs.
    with checkpoint.WorkdirLock(config.train.workdir):
        return _train_and_evaluate(config)


def _train_and_evaluate(config: Config) -> TrainResult:
    train_config, data_config = config.train, config.data
    # Before the first compile: a resumed run loads the programs its first start compiled.
    compile_cache.enable(
        compile_cache.training_directory(train_config.workdir, train_config.compile_cache_dir)
    )
    tokenizer = load_tokenizer(config.model.tokenizer, config.model.special_tokens)
    if config.model.pretrained:
        # Validation could check these only if the model's config.json was already here.
        check_positions(
            data_config, pretrained_positions(config.model.pretrained), config.model.pretrained
        )
    train_examples = load_encoded(data_config.train_path, config, tokenizer)
    raw_eval_examples = load_examples(data_config.eval_path, config)
    eval_examples = encode_examples(
        tokenizer, raw_eval_examples, data_config.max_source_length, data_config.max_target_length
    )
    train_batches = TrainBatches(
        train_examples,
        data_config,
        batch_size=train_config.batch_size,
        seed=train_config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    logger.info("training batches: %s", train_batches.describe())
    steps_per_epoch = train_batches.steps_per_epoch
    if steps_per_epoch == 0:
        what = "rows" if data_config.packing else "examples"
        raise DataError(
            f"{data_config.train_path}: {len(train_examples)} examples give fewer than one "
            f"batch of {train_config.batch_size} {what} (train.batch_size)"
        )
    total_steps = steps_per_epoch * train_config.num_epochs
    if train_config.max_steps:
        total_steps = min(total_steps, train_config.max_steps)

    schedule = optim.learning_rate_schedule(
        train_config.learning_rate, total_steps, train_config.warmup_ratio
    )
    optimizer = optim.make_optimizer(
        schedule, train_config.weight_decay, train_config.max_grad_norm
    )
    mesh = sharding.mesh_from_config(config.mesh)
    # The watcher outlives the checkpointer, whose close waits for the last async save: a
    # SIGTERM from startup until the final write is on disk only asks for a clean stop. The
    # mesh is set for the splash attention kernel, which runs per shard (kobart_flax.attention).
    with (
        jax.set_mesh(mesh),
        distributed.PreemptionWatcher() as preemption,
        checkpoint.TrainCheckpointer(
            checkpoint.checkpoint_dir(train_config.workdir), train_config
        ) as checkpointer,
    ):
        start = initialize(
            config, tokenizer, optimizer, mesh, checkpointer, steps_per_epoch, total_steps
        )
        start.model.use_attention(config.model.attention)
        checkpointer.save_tokenizer(tokenizer)
        result = _train_loop(
            config,
            start,
            checkpointer,
            preemption,
            optimizer,
            schedule,
            mesh,
            train_batches,
            eval_examples,
            total_steps,
            RougeEvaluator(
                start.model,
                tokenizer,
                config,
                raw_eval_examples,
                mesh,
                process_index=jax.process_index(),
                process_count=jax.process_count(),
            )
            if train_config.rouge_every
            else None,
        )
        if result.preempted:
            checkpointer.wait_until_finished()
            logger.warning(
                "stopped at step %d after a preemption notice; the checkpoint is saved: rerun "
                "the same command to resume",
                int(result.state.step),
            )
            return result

    if jax.process_index() == 0:

        def write_final_model(directory: str) -> None:
            result.model.save_pretrained(directory)
            tokenizer.save_pretrained(directory)

        output = storage.publish_directory(
            storage.as_path(train_config.workdir) / FINAL_MODEL_DIR, write_final_model
        )
        logger.info("saved the final model to %s", output)
    return result


def _train_loop(
    config: Config,
    start: _Start,
    checkpointer: checkpoint.TrainCheckpointer,
    preemption: distributed.PreemptionWatcher,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    mesh: jax.sharding.Mesh,
    train_batches: TrainBatches,
    eval_examples: Sequence[EncodedExample],
    total_steps: int,
    rouge_evaluator: RougeEvaluator | None,
) -> TrainResult:
    train_config, data_config = config.train, config.data
    model, state, state_sharding = start.model, start.state, start.state_sharding
    process_index, process_count = jax.process_index(), jax.process_count()
    steps_per_epoch = train_batches.steps_per_epoch
    param_count = sum(leaf.size for leaf in jax.tree.leaves(state.params))
    logger.info(
        "%s parameters, %d train / %d eval examples, %d steps (%d per epoch), %d devices",
        f"{param_count:,}",
        len(train_batches.examples),
        len(eval_examples),
        total_steps,
        steps_per_epoch,
        jax.device_count(),
    )

    train_step = make_train_step(
        model,
        optimizer,
        schedule,
        state_sharding,
        mesh,
        grad_accum_steps=train_config.grad_accum_steps,
        label_smoothing=train_config.label_smoothing,
        freeze_final_logits_bias=train_config.freeze_final_logits_bias,
    )
    eval_step = jax.jit(
        functools.partial(steps.eval_step, apply_fn=model.module.apply),
        in_shardings=(state_sharding.params, sharding.batch_sharding(mesh)),
        out_shardings=sharding.replicated(mesh),
    )
    batch_options = dict(
        batch_size=train_config.batch_size,
        source_buckets=data_config.source_buckets,
        target_buckets=data_config.target_buckets,
        pad_token_id=model.config.pad_token_id,
        decoder_start_token_id=model.config.decoder_start_token_id,
        process_index=process_index,
        process_count=process_count,
    )

    def evaluate(params, step: int) -> dict[str, float]:
        """Metrics by name (see TrainConfig.eval_metric_names)."""
        batches = batching.eval_batches(eval_examples, **batch_options)
        if train_config.eval_max_batches:
            batches = itertools.islice(batches, train_config.eval_max_batches)
        metrics = {EVAL_LOSS: evaluation_loss(eval_step, params, batches, mesh)}
        if rouge_evaluator is not None and rouge_evaluator.due(step, total_steps):
            # Over the whole mesh, the params left in their training shardings.
            metrics.update(rouge_evaluator(params))
        return metrics

    def epoch_batches(epoch: int, start_batch: int) -> Iterator[dict[str, np.ndarray]]:
        return train_batches.epoch(
            epoch,
            start_batch,
            pad_token_id=model.config.pad_token_id,
            decoder_start_token_id=model.config.decoder_start_token_id,
        )

    metadata = {
        "config": config_to_dict(config),
        "model_config": model.config.to_dict(),
        "tokenizer": {"directory": checkpoint.TOKENIZER_DIR, "source": config.model.tokenizer},
        "total_steps": total_steps,
    }
    step, epoch, batch_in_epoch = start.step, start.epoch, start.batch_in_epoch
    train_losses = list(start.train_losses)
    evaluations = list(start.evaluations)
    pending: list[dict[str, jax.Array]] = []  # step metrics not yet fetched from the devices

    def save(state, step: int, epoch: int, batch_in_epoch: int, eval_metrics) -> None:
        next_epoch, next_batch = divmod(batch_in_epoch, steps_per_epoch)
        unlogged = jax.device_get(pending)
        # Checkpoints can fall between log steps: these steps are checked before any is saved.
        check_finite(unlogged, step, checkpointer)
        history_losses = train_losses + [float(m["loss"]) for m in unlogged]
        checkpointer.save(
            step,
            state,
            data_iterator={
                "epoch": epoch + next_epoch,  # of the next batch
                "batch_in_epoch": next_batch,
                "steps_per_epoch": steps_per_epoch,
                "seed": train_config.seed,
            },
            history={"train_losses": history_losses, "evaluations": evaluations},
            metadata=metadata,
            metrics=eval_metrics,
        )

    preempted = False
    if no_recent_improvement(train_config, evaluations):
        # The run this resumes had stopped early: stopping again is what it decided.
        logger.info("early stopping had ended this run at step %d", step)
        total_steps = step
    if step >= total_steps:
        logger.info("training already finished: checkpoint step %d of %d", step, total_steps)
    with (
        MetricsLogger(
            train_config.workdir, enabled=process_index == 0, total_steps=total_steps
        ) as metrics_logger,
        StepTrace(
            train_config.workdir, train_config.profile_start, train_config.profile_steps
        ) as step_trace,
    ):
        metrics_logger.log_hparams(config_to_dict(config))
        while step < total_steps and not preempted:
            batches = prefetched(
                global_batches(epoch_batches(epoch, batch_in_epoch), mesh), data_config.prefetch
            )
            with contextlib.closing(batches):
                for batch in batches:
                    step_trace.before_step(step + 1)
                    state, metrics = train_step(state, batch)
                    step += 1
                    step_trace.after_step(step, metrics)
                    batch_in_epoch += 1
                    # Metrics stay on device until a log step, so the host never waits per step.
                    pending.append(metrics)
                    if step % train_config.log_every == 0 or step == total_steps:
                        interval = jax.device_get(pending)
                        pending.clear()
                        check_finite(interval, step, checkpointer)
                        train_losses.extend(float(m["loss"]) for m in interval)
                        metrics_logger.log_train(step, summarize_interval(interval, epoch))
                    eval_metrics = None
                    if (train_config.eval_every and step % train_config.eval_every == 0) or (
                        step == total_steps
                    ):
                        eval_metrics = evaluate(state.params, step)
                        evaluations.append((step, eval_metrics))
                        metrics_logger.log_eval(
                            step, {k.removeprefix("eval_"): v for k, v in eval_metrics.items()}
                        )
                        if no_recent_improvement(train_config, evaluations):
                            logger.info(
                                "early stopping at step %d: no better %s in %d evaluations",
                                step,
                                train_config.best_metric,
                                train_config.early_stopping_patience,
                            )
                            total_steps = step
                    # A failed background save (a full disk) stops the run now, not at the
                    # next save steps later; this waits for nothing.
                    checkpointer.check_saves()
                    # Every host, every step: on a pod this is where the hosts agree to stop.
                    preempted = preemption.reached(step)
                    if preempted or should_checkpoint(
                        train_config, step, total_steps, eval_metrics
                    ):
                        save(state, step, epoch, batch_in_epoch, eval_metrics)
                    if preempted or step >= total_steps:
                        break
            if batch_in_epoch >= steps_per_epoch:
                epoch, batch_in_epoch = epoch + 1, 0
        # Preempted between two log steps (and checked by the save that followed).
        train_losses.extend(float(m["loss"]) for m in jax.device_get(pending))

    # Whole params on every host (they may be split across hosts): saving and using the
    # final model happen on one host.
    model.params = sharding.local_replica(state.params, mesh)
    eval_losses = [(s, metrics[EVAL_LOSS]) for s, metrics in evaluations]
    return TrainResult(
        train_losses,
        eval_losses,
        state,
        model,
        start_step=start.step,
        preempted=preempted,
        evaluations=evaluations,
    )


def check_finite(
    interval: Sequence[dict[str, np.ndarray]],
    last_step: int,
    checkpointer: checkpoint.TrainCheckpointer,
) -> None:
    """Raises TrainingDiverged at the first step of ``interval`` (which ends at ``last_step``)
    whose loss or gradient norm is not finite.

    Checked where the metrics reach the host anyway (log steps, saves), never per step. Every
    step after a NaN is NaN too, so carrying on would only save NaN checkpoints and a NaN
    final model; the run stops instead, naming the checkpoint to go back to.
    """
    for index, metrics in enumerate(interval):
        loss, grad_norm = float(metrics["loss"]), float(metrics["grad_norm"])
        if np.isfinite(loss) and np.isfinite(grad_norm):
            continue
        step = last_step - len(interval) + 1 + index
        # A non-finite loss was computed from the params saved at step - 1, so those are not
        # good either; a finite loss with a non-finite gradient only spoils this step's update.
        good_before = step - 1 if not np.isfinite(loss) else step
        checkpointer.wait_until_finished()
        saved = checkpointer.all_steps()
        good = [s for s in saved if s < good_before]
        where = f"step {good[-1]} in {checkpointer.directory}" if good else "none (restart from 0)"
        spoiled = [s for s in saved if s >= good_before]
        raise TrainingDiverged(
            f"step {step}: training loss {loss}, gradient norm {grad_norm}: not finite, so the "
            f"run stopped without saving this state (lower train.learning_rate?); last good "
            f"checkpoint: {where}"
            + (f"; steps {spoiled} are newer and hold diverging params" if spoiled else "")
        )


def no_recent_improvement(
    train_config: TrainConfig, evaluations: Sequence[tuple[int, dict[str, float]]]
) -> bool:
    """True when the last ``early_stopping_patience`` evaluations did not beat the earlier best.

    Evaluations without the metric (ROUGE runs only at some of them) do not count.
    """
    patience, name = train_config.early_stopping_patience, train_config.best_metric
    values = [metrics[name] for _, metrics in evaluations if name in metrics]
    if not patience or len(values) <= patience:
        return False
    earlier, recent = values[:-patience], values[-patience:]
    if train_config.best_mode == "max":
        return max(recent) <= max(earlier)
    return min(recent) >= min(earlier)


def should_checkpoint(
    train_config: TrainConfig, step: int, total_steps: int, eval_metrics: dict | None
) -> bool:
    """Every checkpoint_every steps, at the end, and at every evaluation when best-K is on."""
    return (
        step == total_steps
        or (train_config.checkpoint_every > 0 and step % train_config.checkpoint_every == 0)
        or (train_config.keep_best > 0 and eval_metrics is not None)
    )


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
