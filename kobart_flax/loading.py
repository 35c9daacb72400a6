"""One way to load a saved model, for training, predict.py, export_pt.py and the demo.

A *source* is any of:

- a Hugging Face model directory, local or ``gs://`` (``config.json`` and weights: a training
  run's ``final_model/``, an ``export_pt.py`` output, a downloaded KoBART);
- a hub name (``gogamza/kobart-base-v1``), read through the Hugging Face cache;
- an Orbax checkpoint: a run's workdir, its ``checkpoints/`` directory (the newest step, or
  the one asked for) or one step directory in it.

Whatever goes wrong, the caller gets a :class:`ModelLoadError` whose message is one line
naming the source and what to check, so that every command can print it and exit 2.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
from etils import epath
from transformers import BartConfig

from kobart_flax import checkpoint, hf_io, storage
from kobart_flax.pretrained import FlaxBartForConditionalGeneration
from kobart_flax.tokenization import load_tokenizer

logger = logging.getLogger(__name__)

HF_DIRECTORY = "directory"
HUB = "hub"
CHECKPOINT = "checkpoint"
MODEL_CONFIG_FILE = "config.json"


class ModelLoadError(OSError):
    """No model where the user pointed, or one that cannot be read; the message is one line."""


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """Where a model is, once the kind of source is known."""

    kind: str  # HF_DIRECTORY, HUB or CHECKPOINT
    # The model directory or hub name; for a checkpoint, the checkpoint or step directory
    # (a workdir's checkpoints/ in place of the workdir).
    location: str
    given: str  # as the user wrote it, for messages


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    model: FlaxBartForConditionalGeneration
    tokenizer: Any  # a transformers PreTrainedTokenizerFast; None unless asked for
    source: str  # as given, for messages and the demo's page
    # A checkpoint's metadata (its config, model_config, step); None for a model directory.
    metadata: dict[str, Any] | None = None


def resolve_source(source: str | os.PathLike | ModelSource) -> ModelSource:
    """The kind of ``source``; raises ModelLoadError if it can be none of them.

    A name that cannot be a hub id (``runs/tiny/final_mdel``, ``./model``) or whose first
    part is a local directory (``runs/final_mdel`` with ``runs/`` here) is a local path: a
    typo there must say so at once, not after the hub's 20 s of retries and a traceback.
    """
    if isinstance(source, ModelSource):
        return source
    given = os.fspath(source)
    if storage.is_remote(given) or os.path.exists(given):
        return _resolve_directory(storage.as_path(given), given)
    check_hub_name(given)
    return ModelSource(HUB, given, given)


def check_hub_name(name: str, what: str = "model") -> None:
    """Raises ModelLoadError if ``name``, found nowhere locally, cannot be a hub name either."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        raise ModelLoadError(f"no {what} at {name}: no such directory") from None
    if "/" in name and os.path.isdir(name.split("/")[0]):
        raise ModelLoadError(f"no {what} at {name}: no such directory")


def _resolve_directory(path: epath.Path, given: str) -> ModelSource:
    if not path.exists():
        raise ModelLoadError(f"no model at {given}: no such directory")
    if not path.is_dir():
        raise ModelLoadError(
            f"{given} is a file; a model is a directory with {MODEL_CONFIG_FILE} or an Orbax "
            "checkpoint directory"
        )
    if (path / MODEL_CONFIG_FILE).is_file():
        return ModelSource(HF_DIRECTORY, given, given)
    checkpoints = _checkpoint_location(path)
    if checkpoints is not None:
        if checkpoints != path:
            logger.info("%s is a run's workdir; using %s", given, checkpoints)
        return ModelSource(CHECKPOINT, os.fspath(checkpoints), given)
    raise ModelLoadError(
        f"{given}: no {MODEL_CONFIG_FILE}, so not a model directory (a training run's "
        "final_model/ or an export_pt.py output), and no checkpoint steps, so not an Orbax "
        "checkpoint directory (a run's workdir or its checkpoints/)"
    )


def _checkpoint_location(path: epath.Path) -> epath.Path | None:
    """The checkpoint (or step) directory ``path`` stands for, or None if it is not one."""
    is_step = path.name.isdigit() and (path / checkpoint.METADATA).exists()
    if is_step or checkpoint.all_steps(path):
        return path
    # A workdir keeps its steps only in checkpoints/, so it can mean nothing else.
    nested = path / checkpoint.CHECKPOINT_DIR
    if nested.is_dir():
        return nested
    # A checkpoint directory whose steps are all gone or unfinished: restoring names that.
    if path.name == checkpoint.CHECKPOINT_DIR or (path / checkpoint.TOKENIZER_DIR).is_dir():
        return path
    return None


def load_model(
    source: str | os.PathLike | ModelSource,
    dtype: jnp.dtype | str = jnp.float32,
    *,
    step: int | None = None,
    best: bool = False,
    sharding: jax.sharding.Sharding | jax.sharding.Mesh | None = None,
    with_tokenizer: bool = True,
    revision: str | None = None,
) -> LoadedModel:
    """The model saved at ``source`` (see the module docstring), with its tokenizer.

    Args:
      dtype: the compute dtype; parameters stay float32.
      step, best: which step of a checkpoint (default the newest); refused for a model
        directory or hub name, which have no steps.
      sharding: where a checkpoint's params go (see ``checkpoint.restore_params``; default one
        CPU device). A model directory's are host arrays.
      with_tokenizer: also load the tokenizer saved with the model (a model directory's own
        files, a checkpoint's ``tokenizer/``).
      revision: a hub name's branch, tag or commit.

    Raises:
      ModelLoadError: nothing loadable at ``source``, or a model that cannot be read; one line.
    """
    resolved = resolve_source(source)
    dtype = jnp.dtype(dtype)
    if resolved.kind == CHECKPOINT:
        return _load_checkpoint(resolved, dtype, step, best, sharding, with_tokenizer)
    if step is not None or best:
        raise ModelLoadError(
            f"{resolved.given} is a saved model, not an Orbax checkpoint: it has no steps to choose"
        )
    try:
        model = read_pretrained(resolved, dtype, revision)
        tokenizer = load_tokenizer(resolved.location) if with_tokenizer else None
    except ModelLoadError:
        raise
    except (OSError, hf_io.WeightLoadError) as error:  # a weights or tokenizer file is missing
        raise ModelLoadError(
            f"cannot load a model from {resolved.given}: {first_line(error)}"
        ) from error
    return LoadedModel(model, tokenizer, resolved.given)


def read_pretrained(
    source: str | os.PathLike | ModelSource, dtype: jnp.dtype, revision: str | None = None
) -> FlaxBartForConditionalGeneration:
    """``FlaxBartForConditionalGeneration.from_pretrained``: as :func:`load_model`, without the
    tokenizer, and with transformers' errors for a model directory's own files.

    Raises:
      ModelLoadError: nothing loadable at ``source`` (a mistyped path, a hub name out of reach).
      FileNotFoundError: a model directory without a weights file.
      hf_io.WeightLoadError: weights that do not fit the directory's config.
    """
    resolved = resolve_source(source)
    if resolved.kind == CHECKPOINT:
        return _load_checkpoint(resolved, jnp.dtype(dtype), None, False, None, False).model
    with storage.local_directory(resolved.location) as local:
        if resolved.kind == HF_DIRECTORY:
            return FlaxBartForConditionalGeneration.from_hf_files(local, dtype, revision)
        # transformers' and the hub's errors run to many lines with no hint.
        try:
            return FlaxBartForConditionalGeneration.from_hf_files(local, dtype, revision)
        except OSError as error:
            raise ModelLoadError(hub_failure(resolved.given, error)) from error


def _load_checkpoint(
    resolved: ModelSource,
    dtype: jnp.dtype,
    step: int | None,
    best: bool,
    sharding: Any,
    with_tokenizer: bool,
) -> LoadedModel:
    try:
        params, metadata = checkpoint.restore_params(
            resolved.location, step, best=best, sharding=sharding
        )
        tokenizer = checkpoint.load_tokenizer(resolved.location) if with_tokenizer else None
    except (checkpoint.CheckpointError, OSError) as error:
        raise ModelLoadError(first_line(error)) from error
    model = model_from_metadata(metadata, dtype, params)
    return LoadedModel(model, tokenizer, resolved.given, metadata)


def model_from_metadata(
    metadata: dict[str, Any], dtype: jnp.dtype, params: dict | None = None
) -> FlaxBartForConditionalGeneration:
    """The model a checkpoint's metadata describes (its BartConfig); without params, a shell
    whose params are created or restored later."""
    config = BartConfig.from_dict(metadata["model_config"])
    return FlaxBartForConditionalGeneration(config, dtype, params=params or {})


def read_model_config(source: str | os.PathLike | ModelSource) -> BartConfig:
    """The BartConfig of ``source`` without reading its weights (for checks before loading)."""
    resolved = resolve_source(source)
    try:
        if resolved.kind == CHECKPOINT:
            metadata = checkpoint.read_metadata(resolved.location)
            return BartConfig.from_dict(metadata["model_config"])
        if storage.is_remote(resolved.location):
            # local_directory would copy the weights too, only to read the config.
            text = (storage.as_path(resolved.location) / MODEL_CONFIG_FILE).read_text()
            return BartConfig.from_dict(json.loads(text))
        return BartConfig.from_pretrained(resolved.location)
    except (checkpoint.CheckpointError, OSError, KeyError, ValueError) as error:
        if resolved.kind == HUB and isinstance(error, OSError):
            raise ModelLoadError(hub_failure(resolved.given, error)) from error
        raise ModelLoadError(
            f"cannot read the model config of {resolved.given}: {first_line(error)}"
        ) from error


def hub_failure(name: str, error: BaseException) -> str:
    """One line for a hub name that could not be loaded, with the cause the hub gave."""
    from huggingface_hub import constants

    cause = first_line(error)
    if constants.is_offline_mode():
        return (
            f"no model at {name}: not a local directory, and not in the Hugging Face cache "
            f"(HF_HUB_OFFLINE is set, so the hub was not asked): {cause}"
        )
    return (
        f"no model at {name}: not a local directory, and not loadable from the Hugging Face hub "
        f"(check the name and the network; HF_HUB_OFFLINE=1 reads only the cache): {cause}"
    )


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
