"""Orbax checkpoints: save, resume, best-k, and restoring onto any mesh.

A *checkpoint directory* is ``<workdir>/checkpoints``. It describes itself: export and the
demo need nothing else.

::

    <workdir>/checkpoints/
      tokenizer/        the run's tokenizer files, written once before the first save
      <step>/           one Orbax step, complete (see "Atomicity" below)
        params/         model parameters (PyTree, OCDBT): all that export and the demo read
        train_state/    step, optimizer state, dropout key (as raw key data)
        data_iterator/  JSON: epoch and batch_in_epoch of the next batch, steps_per_epoch, seed
        history/        JSON: every train loss and evaluation so far
        metadata/       JSON: the full config, the model's BartConfig, the tokenizer, the key impl
        metrics/        JSON (Orbax's): the evaluation metrics at this step, for best-k
      corrupted/        steps found unreadable on resume, moved aside (never deleted)

Resume order (``train.train_and_evaluate``; the first that applies wins):

1. The newest complete checkpoint in ``<workdir>/checkpoints``: the whole train state and the
   data position, so the run continues exactly (same losses as an uninterrupted run). An
   unreadable one is moved to ``corrupted/`` with a warning and the next older one is tried.
2. ``train.init_checkpoint``: params only, from another run's checkpoint directory (its newest
   step) or one step directory in it; fresh optimizer, step 0.
3. ``model.pretrained``: Hugging Face weights.
4. Random init.

Atomicity: Orbax writes a step to ``<step>.orbax-checkpoint-tmp*`` and renames it when every
item is written (on GCS, where renames are not atomic, it writes ``commit_success.txt`` last
instead). A process killed mid-save leaves only such a temporary directory: every reader here
ignores it, and the next training run deletes it (``cleanup_tmp_directories``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import json
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import fsspec
import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from kobart_flax import steps, storage
from kobart_flax.config import TrainConfig
from kobart_flax.storage import as_path


def _import_orbax():
    """Imports orbax without configuring the root logger as a side effect.

    Importing orbax logs (DEBUG) through absl, and absl calls ``logging.basicConfig()`` when
    the root logger has no handler yet: that would turn the entry point's own
    ``logging.basicConfig(level=INFO)`` into a no-op and hide every INFO line of the run. A
    placeholder handler during the import leaves the root logger as it was.
    """
    root = logging.getLogger()
    placeholder = logging.NullHandler() if not root.handlers else None
    if placeholder is not None:
        root.addHandler(placeholder)
    try:
        import orbax.checkpoint

        return orbax.checkpoint
    finally:
        if placeholder is not None:
            root.removeHandler(placeholder)


ocp = _import_orbax()
logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"  # under train.workdir
TOKENIZER_DIR = "tokenizer"  # under the checkpoint directory
CORRUPTED_DIR = "corrupted"  # under the checkpoint directory
FORMAT_VERSION = 1

# The items of one step. The two array items are separate so that export, the demo and
# train.init_checkpoint read the params without the optimizer state (twice their size).
PARAMS = "params"
TRAIN_STATE = "train_state"
DATA_ITERATOR = "data_iterator"
HISTORY = "history"
METADATA = "metadata"
JSON_ITEMS = (DATA_ITERATOR, HISTORY, METADATA)
ITEMS = (PARAMS, TRAIN_STATE, *JSON_ITEMS)
# Written by Orbax next to the items when save() is given metrics: <step>/metrics/metrics.
_ORBAX_METRICS_ITEM = ocp.checkpoint_manager.METRIC_ITEM_NAME


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or unreadable; the message names it."""


class ResumeError(RuntimeError):
    """A training run cannot resume from its checkpoints and will not silently start over."""


class SaveError(RuntimeError):
    """A checkpoint could not be written (disk full, bucket unreachable); training stopped."""


class WorkdirLockedError(RuntimeError):
    """Another training run holds the workdir's lock; the message names it."""


def checkpoint_dir(workdir: str | epath.PathLike) -> epath.Path:
    return as_path(workdir) / CHECKPOINT_DIR


# ---------------------------------------------------------------------------------------
# Reading (export, demo, init_checkpoint): free functions over a checkpoint directory


def all_steps(directory: str | epath.PathLike) -> list[int]:
    """The complete steps in ``directory``, ascending; temporary (partial) ones are skipped."""
    directory = as_path(directory)
    if not directory.is_dir():
        return []
    return sorted(m.step for m in ocp.step.standard_name_format().find_all(directory))


def latest_step(directory: str | epath.PathLike) -> int | None:
    steps_found = all_steps(directory)
    return steps_found[-1] if steps_found else None


def best_step(
    directory: str | epath.PathLike, metric: str | None = None, mode: str | None = None
) -> int | None:
    """The step with the best evaluation ``metric`` (newest on ties), or None if no step has it.

    ``metric`` and ``mode`` default to ``train.best_metric`` / ``train.best_mode`` of the run
    that wrote the newest step.
    """
    directory = as_path(directory)
    if metric is None or mode is None:
        newest = latest_step(directory)
        if newest is None:
            return None
        train_config = read_metadata(directory, newest).get("config", {}).get("train", {})
        metric = metric or train_config.get("best_metric", TrainConfig.best_metric)
        mode = mode or train_config.get("best_mode", TrainConfig.best_mode)
    scored = [
        (value, step)
        for step, metrics in step_metrics(directory).items()
        if (value := _metric_value(metrics, metric)) is not None
    ]
    if not scored:
        return None
    # Newest wins ties: sort by (value, step) and take the end that is best.
    if mode == "min":
        return min(scored, key=lambda item: (item[0], -item[1]))[1]
    return max(scored, key=lambda item: (item[0], item[1]))[1]


def step_metrics(directory: str | epath.PathLike) -> dict[int, dict[str, float] | None]:
    """Evaluation metrics of every complete step (None where the step had no evaluation)."""
    return {step: _read_metrics(as_path(directory) / str(step)) for step in all_steps(directory)}


def _read_metrics(step_dir: epath.Path) -> dict[str, float] | None:
    """Orbax's metrics file of a step; raises CheckpointError if it does not parse."""
    path = step_dir / _ORBAX_METRICS_ITEM / _ORBAX_METRICS_ITEM
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as error:
        raise CheckpointError(
            f"checkpoint {step_dir} is unreadable: item '{_ORBAX_METRICS_ITEM}': {error}"
        ) from error


def read_metadata(directory: str | epath.PathLike, step: int | None = None) -> dict[str, Any]:
    """The metadata of ``step`` (default: the newest): config, model_config, tokenizer, ..."""
    return read_json_item(directory, METADATA, step)


def read_history(directory: str | epath.PathLike, step: int | None = None) -> dict[str, Any]:
    """Every train loss (one per step, from step 1) and evaluation up to ``step``."""
    return read_json_item(directory, HISTORY, step)


def read_json_item(
    directory: str | epath.PathLike, item: str, step: int | None = None
) -> dict[str, Any]:
    """One JSON item (``metadata``, ``history``, ``data_iterator``) of ``step`` (default: the
    newest)."""
    directory, step = _resolve_step(as_path(directory), step, best=False)
    return _read_json_item(directory, step, item)


def restore_params(
    directory: str | epath.PathLike,
    step: int | None = None,
    *,
    best: bool = False,
    sharding: jax.sharding.Sharding | jax.sharding.Mesh | Any | None = None,
) -> tuple[dict, dict[str, Any]]:
    """Restores the model params of one step, onto any devices: ``(params, metadata)``.

    Args:
      directory: a checkpoint directory (``<workdir>/checkpoints``), or one step directory in
        it (``.../checkpoints/1200``).
      step: which step; default the newest (or the best, with ``best=True``).
      best: take the best step by the run's ``train.best_metric`` / ``train.best_mode``.
      sharding: where the params go. None: one CPU device (what export needs). A
        ``jax.sharding.Sharding``: every array. A ``Mesh``: replicated over it. A pytree of
        shardings matching the params: per array. Whatever mesh the checkpoint was written
        from, Orbax reads each array into the target layout.

    The target tree (shapes, dtypes) comes from ``jax.eval_shape`` of the model the metadata
    describes, so nothing is materialised before it is read, and a checkpoint that does not
    match its own model config is an error.

    Raises:
      CheckpointError: no such step, or the step is incomplete or unreadable (the message
        names the step directory and the item).
    """
    directory, step = _resolve_step(as_path(directory), step, best)
    metadata = _read_json_item(directory, step, METADATA)
    _check_metadata(metadata, directory / str(step), ("model_config",))
    abstract = abstract_params(metadata["model_config"])
    shardings = _param_shardings(abstract, sharding)
    target = jax.tree.map(
        lambda leaf, leaf_sharding: jax.ShapeDtypeStruct(
            leaf.shape, leaf.dtype, sharding=leaf_sharding
        ),
        abstract,
        shardings,
    )
    with _read_only_manager(directory) as manager:
        params = _restore_item(manager, directory, step, PARAMS, ocp.args.StandardRestore(target))
    return params, metadata


def abstract_params(model_config: Mapping[str, Any]) -> dict:
    """``jax.ShapeDtypeStruct`` tree of the params of the BART a BartConfig dict describes."""
    from transformers import BartConfig

    from kobart_flax.modeling import BartForConditionalGenerationModule, BartSpec
    from kobart_flax.pretrained import init_params

    bart_config = BartConfig.from_dict(dict(model_config))
    module = BartForConditionalGenerationModule(BartSpec.from_hf_config(bart_config))
    return jax.eval_shape(functools.partial(init_params, module), jax.random.key(0))


def tokenizer_dir(directory: str | epath.PathLike) -> epath.Path:
    """Where a checkpoint directory keeps its tokenizer (one copy for all steps)."""
    directory = as_path(directory)
    if directory.name.isdigit() and not (directory / TOKENIZER_DIR).exists():
        directory = directory.parent  # a step directory was given
    return directory / TOKENIZER_DIR


def load_tokenizer(directory: str | epath.PathLike):
    """The tokenizer saved with a checkpoint directory (copied locally first if on gs://)."""
    from kobart_flax.tokenization import load_tokenizer as load

    source = tokenizer_dir(directory)
    if not source.exists():
        raise CheckpointError(f"{source}: no tokenizer saved with this checkpoint directory")
    return load(str(source))


def _resolve_step(directory: epath.Path, step: int | None, best: bool) -> tuple[epath.Path, int]:
    """(checkpoint directory, step) from a checkpoint or step directory and step/best."""
    if directory.name.isdigit() and (directory / METADATA).exists():
        if step is not None and step != int(directory.name):
            raise CheckpointError(f"{directory} is step {directory.name}, not step {step}")
        return directory.parent, int(directory.name)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such checkpoint directory")
    if step is None:
        step = best_step(directory) if best else latest_step(directory)
        if step is None:
            what = "evaluated " if best and latest_step(directory) is not None else ""
            raise CheckpointError(f"{directory}: no complete {what}checkpoint")
    elif step not in all_steps(directory):
        raise CheckpointError(
            f"{directory}: no complete checkpoint for step {step} (found {all_steps(directory)})"
        )
    return directory, step


def _param_shardings(abstract: dict, sharding: Any) -> Any:
    if sharding is None:
        sharding = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    if isinstance(sharding, jax.sharding.Mesh):
        sharding = jax.sharding.NamedSharding(sharding, jax.sharding.PartitionSpec())
    if isinstance(sharding, jax.sharding.Sharding):
        return jax.tree.map(lambda _: sharding, abstract)
    return sharding


@functools.cache
def _read_only_options() -> ocp.CheckpointManagerOptions:
    return ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)


def _read_only_manager(directory: epath.Path) -> ocp.CheckpointManager:
    try:
        return ocp.CheckpointManager(directory, options=_read_only_options())
    except Exception as error:
        # Orbax reads every step's metrics when it opens a directory; name the broken step.
        for step in all_steps(directory):
            _read_metrics(directory / str(step))
        raise CheckpointError(f"cannot open checkpoint directory {directory}: {error}") from error


def _restore_item(
    manager: ocp.CheckpointManager,
    directory: epath.Path,
    step: int,
    item: str,
    args: ocp.args.CheckpointArgs,
) -> Any:
    """One item of one step, with failures turned into a CheckpointError naming both."""
    step_dir = directory / str(step)
    if not (step_dir / item).exists():
        raise CheckpointError(f"checkpoint {step_dir} is incomplete: item '{item}' is missing")
    try:
        return manager.restore(step, args=ocp.args.Composite(**{item: args}))[item]
    except Exception as error:  # Orbax, tensorstore and json each raise their own types.
        message = str(error).splitlines()[0] if str(error) else ""
        if len(message) > 600:
            message = message[:600] + " ..."
        raise CheckpointError(
            f"checkpoint {step_dir} is unreadable: item '{item}': {type(error).__name__}: {message}"
        ) from error


def _read_json_item(directory: epath.Path, step: int, item: str) -> dict[str, Any]:
    with _read_only_manager(directory) as manager:
        return _restore_item(manager, directory, step, item, ocp.args.JsonRestore())


def _check_metadata(metadata: Any, step_dir: epath.Path, keys: tuple[str, ...]) -> None:
    missing = [key for key in keys if not isinstance(metadata, dict) or key not in metadata]
    if missing:
        raise CheckpointError(
            f"checkpoint {step_dir} is unreadable: item 'metadata' lacks {', '.join(missing)}"
        )


def _metric_value(metrics: Mapping[str, Any] | None, name: str) -> float | None:
    if not metrics or name not in metrics:
        return None
    value = float(metrics[name])
    return None if math.isnan(value) else value


# ---------------------------------------------------------------------------------------
# The train state as Orbax stores it


def state_to_items(state: steps.TrainState) -> tuple[dict, dict]:
    """(params, rest): typed PRNG keys become their raw uint32 data, which Orbax stores."""
    rest = {
        "step": state.step,
        "opt_state": state.opt_state,
        "dropout_key": jax.random.key_data(state.dropout_key),
    }
    return state.params, rest


def items_to_state(params: dict, rest: dict, key_impl: str) -> steps.TrainState:
    return steps.TrainState(
        step=rest["step"],
        params=params,
        opt_state=rest["opt_state"],
        dropout_key=jax.random.wrap_key_data(rest["dropout_key"], impl=key_impl),
    )


def abstract_items(abstract_state: steps.TrainState) -> tuple[dict, dict]:
    """``state_to_items`` of an abstract (ShapeDtypeStruct, with shardings) state."""
    key = abstract_state.dropout_key
    key_data = jax.eval_shape(jax.random.key_data, key)
    key_data = jax.ShapeDtypeStruct(key_data.shape, key_data.dtype, sharding=key.sharding)
    return abstract_state.params, {
        "step": abstract_state.step,
        "opt_state": abstract_state.opt_state,
        "dropout_key": key_data,
    }


def key_impl_name(key: jax.Array) -> str:
    return str(jax.random.key_impl(key))


@dataclasses.dataclass
class Restored:
    step: int
    state: steps.TrainState
    data_iterator: dict[str, Any]
    history: dict[str, Any]
    metadata: dict[str, Any]


# ---------------------------------------------------------------------------------------
# Writing (the training loop)


class TrainCheckpointer:
    """The training run's checkpoints: async saves, last-K plus best-K retention, resume.

    Every host constructs one and calls ``save`` / ``restore_newest`` at the same steps
    (Orbax synchronises the hosts and writes each array shard from the host that holds it).
    Use it as a context manager, so the last async save is finished before the process exits.
    """

    def __init__(self, directory: str | epath.PathLike, train_config: TrainConfig):
        self.directory = as_path(directory)
        self._metric = train_config.best_metric
        self._mode = train_config.best_mode
        self._keep_best = train_config.keep_best
        worst = math.inf if self._mode == "min" else -math.inf

        def best_fn(metrics: Mapping[str, Any]) -> float:
            value = _metric_value(metrics, self._metric)
            return worst if value is None else value

        self._restart_if_unreadable = train_config.restart_if_unreadable
        # Before Orbax reads the steps' metrics: one unreadable metrics file would stop it.
        self._move_aside_unreadable_steps()
        policies: list[ocp.checkpoint_managers.PreservationPolicy] = [
            ocp.checkpoint_managers.LatestN(train_config.keep_checkpoints)
        ]
        if train_config.keep_best:
            policies.append(
                ocp.checkpoint_managers.BestN(
                    get_metric_fn=best_fn,
                    # BestN keeps the end of an ascending sort; descending puts the lowest there.
                    reverse=self._mode == "min",
                    n=train_config.keep_best,
                    # Steps without an evaluation are kept only as one of the newest K.
                    keep_checkpoints_without_metrics=False,
                )
            )
        options = ocp.CheckpointManagerOptions(
            # best_fn makes Orbax store the metrics passed to save() with each step.
            best_fn=best_fn,
            best_mode=self._mode,
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
            cleanup_tmp_directories=True,  # partial steps of a killed run
            enable_async_checkpointing=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)
        self._writing_step: int | None = None  # of the newest save started

    # -- saving

    def save(
        self,
        step: int,
        state: steps.TrainState,
        *,
        data_iterator: Mapping[str, Any],
        history: Mapping[str, Any],
        metadata: Mapping[str, Any],
        metrics: Mapping[str, float] | None = None,
    ) -> None:
        """Starts an async save of ``step``; returns once the arrays are copied off the devices.

        ``metrics`` (the evaluation at this step, if any) rank the step for best-K.
        """
        started = time.perf_counter()
        params, rest = state_to_items(state)
        metadata = {
            **metadata,
            "format_version": FORMAT_VERSION,
            "step": step,
            "dropout_key_impl": key_impl_name(state.dropout_key),
        }
        # Orbax waits for the previous save first, and raises its failure here.
        with self._save_errors():
            self._manager.save(
                step,
                args=ocp.args.Composite(
                    **{
                        PARAMS: ocp.args.StandardSave(params),
                        TRAIN_STATE: ocp.args.StandardSave(rest),
                        DATA_ITERATOR: ocp.args.JsonSave(dict(data_iterator)),
                        HISTORY: ocp.args.JsonSave(dict(history)),
                        METADATA: ocp.args.JsonSave(metadata),
                    }
                ),
                metrics=dict(metrics) if metrics else None,
                # When to save is the training loop's decision (interval, evals, end, preemption).
                force=True,
            )
        self._writing_step = step
        seconds = time.perf_counter() - started
        logger.info("checkpoint step %d: writing in the background (blocked %.2fs)", step, seconds)

    def save_tokenizer(self, tokenizer) -> None:
        """Writes the tokenizer files once per checkpoint directory (process 0)."""
        target = self.directory / TOKENIZER_DIR
        if jax.process_index() == 0 and not target.exists():
            storage.publish_directory(target, tokenizer.save_pretrained)
        _sync_hosts("kobart_flax_checkpoint_tokenizer")

    def wait_until_finished(self) -> None:
        with self._save_errors():
            self._manager.wait_until_finished()

    def check_saves(self) -> None:
        """Raises SaveError if a background save has failed; call it after every step.

        Cheap while a save is still writing or none failed: it waits for nothing. Without it a
        failure (a full disk) surfaced only at the next save, after more steps of training.
        """
        if not self._manager.is_saving_in_progress():
            self.wait_until_finished()  # a finished save: returns at once, or raises its error

    @contextlib.contextmanager
    def _save_errors(self) -> Iterator[None]:
        """Turns the failure of a background save into one SaveError naming step and cause."""
        try:
            yield
        except Exception as error:
            cause = _root_cause(error)
            newest = self._manager.latest_step()
            raise SaveError(
                f"checkpoint step {self._writing_step} could not be written to {self.directory}: "
                f"{_one_line(cause)}; training stopped (newest complete checkpoint: "
                f"{'none' if newest is None else f'step {newest}'}; free space or fix the "
                "storage, then rerun to resume)"
            ) from error

    # -- reading

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def restore(
        self, step: int, abstract_state_for: Callable[[dict[str, Any]], steps.TrainState]
    ) -> Restored:
        """Restores ``step``; ``abstract_state_for(metadata)`` gives the target state layout
        (``jax.ShapeDtypeStruct`` leaves with the shardings to restore onto)."""
        directory = self.directory
        read = functools.partial(_restore_item, self._manager, directory, step)
        metadata = read(METADATA, ocp.args.JsonRestore())
        _check_metadata(metadata, directory / str(step), ("model_config", "dropout_key_impl"))
        abstract_state = abstract_state_for(metadata)
        abstract_params_tree, abstract_rest = abstract_items(abstract_state)
        params = read(PARAMS, ocp.args.StandardRestore(abstract_params_tree))
        rest = read(TRAIN_STATE, ocp.args.StandardRestore(abstract_rest))
        data_iterator = read(DATA_ITERATOR, ocp.args.JsonRestore())
        history = read(HISTORY, ocp.args.JsonRestore())
        state = items_to_state(params, rest, metadata["dropout_key_impl"])
        if int(state.step) != step:
            raise CheckpointError(
                f"checkpoint {directory / str(step)} holds a train state at step "
                f"{int(state.step)}, not {step}"
            )
        return Restored(step, state, data_iterator, history, metadata)

    def restore_newest(
        self, abstract_state_for: Callable[[dict[str, Any]], steps.TrainState]
    ) -> Restored | None:
        """Resume step 1: the newest step that restores; damaged newer ones are moved aside.

        Raises:
          ResumeError: a read failed for a reason other than damage (permissions, network,
            I/O: the step may be fine), or no step is readable and
            ``train.restart_if_unreadable`` is off. Nothing is moved aside then.
        """
        damaged: dict[int, CheckpointError] = {}
        for step in reversed(self.all_steps()):
            try:
                restored = self.restore(step, abstract_state_for)
            except CheckpointError as error:
                if _is_read_failure(error):
                    raise ResumeError(
                        f"{error}: a read failure, not damage, so nothing was moved aside; "
                        "rerun once the checkpoint is readable"
                    ) from error
                logger.warning("%s; falling back to the previous checkpoint", error)
                damaged[step] = error
                continue
            for bad_step in damaged:
                self._move_aside(bad_step)
            return restored
        if damaged:
            self._restart_or_stop({step: str(error) for step, error in damaged.items()})
        return None

    def _restart_or_stop(self, damaged: Mapping[int, str]) -> None:
        """No step is readable: move them all aside (train.restart_if_unreadable) or stop."""
        steps_text = ", ".join(str(step) for step in sorted(damaged, reverse=True))
        if not self._restart_if_unreadable:
            raise ResumeError(
                f"no readable checkpoint in {self.directory}: step(s) {steps_text} are damaged "
                f"(newest: {next(iter(damaged.values()))}); nothing was moved: rerun with "
                f"train.restart_if_unreadable=true to move them to {CORRUPTED_DIR}/ and start "
                "over from step 0"
            )
        logger.warning(
            "no readable checkpoint in %s: moving step(s) %s to %s/ and starting over from step 0 "
            "(train.restart_if_unreadable)",
            self.directory,
            steps_text,
            CORRUPTED_DIR,
        )
        for step in damaged:
            self._move_aside(step, reload=False)
        self._manager.reload()

    # -- damaged steps

    def _move_aside_unreadable_steps(self) -> None:
        """Moves aside steps whose items are missing or whose JSON does not parse.

        Arrays are checked when they are restored (``restore_newest``); this catches what
        would stop ``ocp.CheckpointManager`` from even opening the directory.
        """
        present = all_steps(self.directory)
        damaged: dict[int, str] = {}
        for step in present:
            step_dir = self.directory / str(step)
            missing = [item for item in ITEMS if not (step_dir / item).exists()]
            if missing:
                damaged[step] = (
                    f"checkpoint {step_dir} is incomplete: item '{missing[0]}' is missing"
                )
                continue
            try:
                _read_metrics(step_dir)
            except CheckpointError as error:
                damaged[step] = str(error)
        for problem in damaged.values():
            logger.warning("%s", problem)
        if damaged and len(damaged) == len(present):
            self._restart_or_stop(dict(sorted(damaged.items(), reverse=True)))
            return
        for step in damaged:
            self._move_aside(step, reload=False)

    def _move_aside(self, step: int, reload: bool = True) -> None:
        """Keeps a damaged step for inspection, out of the way of the steps to come."""
        source = self.directory / str(step)
        target = self.directory / CORRUPTED_DIR / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        if jax.process_index() == 0:
            target.parent.mkdir(parents=True, exist_ok=True)
            source.rename(target)
            logger.warning("moved %s to %s", source, target)
        _sync_hosts(f"kobart_flax_checkpoint_move_aside_{step}")
        if reload:
            self._manager.reload()

    # -- lifetime

    def close(self) -> None:
        """Waits for the last save; raises SaveError if it failed."""
        with self._save_errors():
            self._manager.close()

    def __enter__(self) -> TrainCheckpointer:
        return self

    def __exit__(self, exc_type: type | None, *exc_info: object) -> None:
        try:
            self.close()
        except SaveError as error:
            if exc_type is None:
                raise
            logger.error("%s", error)  # the error already on its way says why training stopped


# Status codes (tensorstore, gRPC) of a read that failed for a reason other than the data.
_READ_FAILURE_CODES = (
    "UNAVAILABLE",
    "DEADLINE_EXCEEDED",
    "PERMISSION_DENIED",
    "UNAUTHENTICATED",
    "RESOURCE_EXHAUSTED",
    "ABORTED",
    "CANCELLED",
)


def _causes(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _is_read_failure(error: CheckpointError) -> bool:
    """True when a step could not be read for a reason that says nothing about its files
    (permissions, network, I/O errors): moving such a step aside would lose a good one.

    A missing file is damage (a step is complete only with all of them); anything that is
    not an OSError (JSON, tensorstore's DATA_LOSS, a shape mismatch) is damage too.
    """
    for cause in _causes(error):
        if isinstance(cause, OSError) and not isinstance(
            cause, FileNotFoundError | IsADirectoryError | NotADirectoryError
        ):
            return True
        if any(f"{code}:" in str(cause) for code in _READ_FAILURE_CODES):
            return True
    return False


def _root_cause(error: BaseException) -> BaseException:
    return list(_causes(error))[-1]


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0] if lines else ''}"
    if len(text) > 600:
        text = text[:600] + " ..."
    if isinstance(error, OSError) and error.errno == errno.ENOSPC or "No space left" in text:
        text = f"disk full ({text})"
    return text


def _sync_hosts(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


# ---------------------------------------------------------------------------------------
# One training run per workdir

LOCK_FILE = "train.lock"  # under train.workdir, while a training run uses it


class WorkdirLock:
    """Keeps a second training run out of a workdir in use; a context manager.

    Without it, the second run's start-up deletes the first's in-flight checkpoint, both
    crash, and the second resumes from the first's steps with its own settings. Process 0
    creates ``<workdir>/train.lock`` atomically (``O_EXCL`` locally; on gs:// an upload that
    succeeds only where no object exists, ``ifGenerationMatch=0``), naming its host and pid,
    and deletes it on exit, also after an exception or a SIGTERM stop. A lock left by a killed
    run on this host (its pid is gone) is taken over with a warning; a lock from another host
    cannot be checked from here, so the error says how to remove it.
    """

    def __init__(self, workdir: str | epath.PathLike):
        self.path = as_path(workdir) / LOCK_FILE
        self._record: dict[str, Any] | None = None

    def __enter__(self) -> WorkdirLock:
        error = None
        if jax.process_index() == 0:
            try:
                self._acquire()
            except WorkdirLockedError as caught:
                error = caught
        if jax.process_count() > 1:
            # Every host stops when process 0 could not lock, rather than wait for it forever.
            locked = multihost_utils.broadcast_one_to_all(np.int32(error is None))
            if not locked and error is None:
                error = WorkdirLockedError(
                    f"{self.path}: process 0 could not lock the workdir (its log names the holder)"
                )
        if error is not None:
            raise error
        return self

    def __exit__(self, *exc_info: object) -> None:
        record, self._record = self._record, None
        # Only our own lock: after a takeover, the file may be another run's.
        if record is not None and self._read() == record:
            self.path.unlink()

    def _acquire(self) -> None:
        record = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        }
        # Twice at most: once more after taking over a stale lock, or if the holder released
        # its lock between our create and read.
        for _ in range(2):
            if self._create(json.dumps(record)):
                self._record = record
                return
            holder = self._read()
            if holder is None:
                continue
            if holder.get("host") == record["host"] and not _process_alive(holder.get("pid")):
                logger.warning(
                    "%s: taking over the lock of pid %s on %s (started %s): that process is gone",
                    self.path,
                    holder.get("pid"),
                    holder.get("host"),
                    holder.get("started"),
                )
                # Two runs taking over at the same instant could both succeed; a crash
                # followed by two restarts within milliseconds is not worth a lock server.
                self.path.unlink(missing_ok=True)
                continue
            raise WorkdirLockedError(self._held_message(holder, record["host"]))
        raise WorkdirLockedError(f"{self.path}: could not create the lock file; rerun")

    def _create(self, text: str) -> bool:
        """Creates the lock file unless it exists; False if it did."""
        if storage.is_remote(self.path):
            filesystem, path = fsspec.core.url_to_fs(str(self.path))
            try:
                filesystem.pipe_file(path, text.encode(), mode="create")
            except FileExistsError:  # gcsfs: 412 Precondition Failed
                return False
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(descriptor, "w") as file:
            file.write(text)
        return True

    def _read(self) -> dict[str, Any] | None:
        """The holder's record; None if there is no lock file. A file that does not parse
        (a crash between creating and writing it) is an error naming it."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        try:
            holder = json.loads(text)
        except ValueError:
            holder = None
        if not isinstance(holder, dict):
            raise WorkdirLockedError(
                f"{self.path}: a lock file that names no run; if no training run uses this "
                "workdir, delete it and rerun"
            )
        return holder

    def _held_message(self, holder: Mapping[str, Any], this_host: str) -> str:
        who = f"pid {holder.get('pid')} on {holder.get('host')} (started {holder.get('started')})"
        if holder.get("host") == this_host:
            return (
                f"{self.path}: the workdir is in use by {who}; wait for that run to end or "
                "choose another train.workdir"
            )
        return (
            f"{self.path}: the workdir is in use by {who}; if that run is gone, delete "
            f"{self.path} and rerun"
        )


def _process_alive(pid: Any) -> bool:
    if not isinstance(pid, int):
        return True  # not a pid this host can check: assume the holder is alive
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True
