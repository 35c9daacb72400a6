"""Hugging Face BART weights <-> this project's Flax parameter tree.

One rename/transpose table serves both directions: import (``safetensors`` /
``pytorch_model.bin`` / ``flax_model.msgpack`` -> Flax params) and export (Flax params ->
PyTorch state dict). Every copied tensor is shape-checked against the target tree.

PyTorch names look like ``model.encoder.layers.3.self_attn.q_proj.weight``; the Flax
path is ``("model", "encoder", "layers", "3", "self_attn", "q_proj", "kernel")``. Dense
kernels are stored transposed (PyTorch ``[out, in]``, Flax ``[in, out]``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from flax import traverse_util

logger = logging.getLogger(__name__)

SAFETENSORS_FILE = "model.safetensors"
PYTORCH_FILE = "pytorch_model.bin"
FLAX_FILE = "flax_model.msgpack"
# Preference order when a directory or hub repository has several formats.
WEIGHT_FILES = (SAFETENSORS_FILE, FLAX_FILE, PYTORCH_FILE)

# PyTorch keys that carry no weights of their own: token embeddings and the LM head are
# tied to ``model.shared``; ``version`` buffers are fairseq left-overs.
TIED_OR_UNUSED_SUFFIXES = (
    "encoder.embed_tokens.weight",
    "decoder.embed_tokens.weight",
    "lm_head.weight",
    "encoder.version",
    "decoder.version",
)
EMBEDDING_MODULES = ("shared", "embed_positions")
# The tensors that BartForConditionalGeneration ties to model.shared.weight.
TIED_TO_SHARED = (
    "model.encoder.embed_tokens.weight",
    "model.decoder.embed_tokens.weight",
    "lm_head.weight",
)


class WeightLoadError(ValueError):
    """Weights that do not fit the model: names which are missing, unexpected or misshapen."""


def flax_path_for(pytorch_name: str) -> tuple[tuple[str, ...], bool]:
    """``model.encoder.layers.0.fc1.weight`` -> (Flax path, whether to transpose)."""
    *module_path, leaf = pytorch_name.split(".")
    if not module_path:  # final_logits_bias sits at the root in both trees
        return (leaf,), False
    module = module_path[-1]
    if leaf == "bias":
        return (*module_path, "bias"), False
    if module in EMBEDDING_MODULES:
        return (*module_path, "embedding"), False
    if "norm" in module:
        return (*module_path, "scale"), False
    return (*module_path, "kernel"), True


def pytorch_name_for(flax_path: tuple[str, ...]) -> tuple[str, bool]:
    """Inverse of :func:`flax_path_for`."""
    *module_path, leaf = flax_path
    if not module_path:
        return leaf, False
    pytorch_leaf = "bias" if leaf == "bias" else "weight"
    return ".".join((*module_path, pytorch_leaf)), leaf == "kernel"


def state_dict_to_flax(state_dict: Mapping[str, np.ndarray], target_params: Mapping) -> dict:
    """Map a PyTorch-named state dict onto the structure of ``target_params``.

    ``target_params`` (real arrays or ``jax.ShapeDtypeStruct``s) fixes names, shapes and
    dtypes. Accepts checkpoints of ``BartModel`` (no ``model.`` prefix, no
    ``final_logits_bias``; gogamza/kobart-base-v1 is one) as well as
    ``BartForConditionalGeneration``.
    """
    targets = traverse_util.flatten_dict(target_params)
    params: dict[tuple[str, ...], np.ndarray] = {}
    unexpected = []
    for name, tensor in state_dict.items():
        if name.endswith(TIED_OR_UNUSED_SUFFIXES):
            continue
        if name != "final_logits_bias" and not name.startswith("model."):
            name = "model." + name
        path, transpose = flax_path_for(name)
        if path not in targets:
            unexpected.append(name)
            continue
        array = np.asarray(tensor)
        # Compare in the checkpoint's own (PyTorch) layout, so the message shows its shapes.
        expected_shape = tuple(targets[path].shape)
        if transpose:
            expected_shape = expected_shape[::-1]
        if array.shape != expected_shape:
            raise WeightLoadError(
                f"{name}: checkpoint shape {array.shape} does not match the model's "
                f"{expected_shape} (is the config the checkpoint's own?)"
            )
        if transpose:
            array = array.T
        params[path] = array.astype(targets[path].dtype)

    if unexpected:
        raise WeightLoadError(f"checkpoint has weights this model does not: {sorted(unexpected)}")
    bias_path = ("final_logits_bias",)
    if bias_path in targets and bias_path not in params:
        # BartModel checkpoints have no LM head bias; transformers initialises it to zeros.
        logger.info("checkpoint has no final_logits_bias; using zeros")
        params[bias_path] = np.zeros(targets[bias_path].shape, targets[bias_path].dtype)
    missing = sorted(".".join(path) for path in targets if path not in params)
    if missing:
        raise WeightLoadError(f"checkpoint lacks weights the model needs: {missing}")
    return traverse_util.unflatten_dict(params)


def flax_to_state_dict(params: Mapping, *, include_tied: bool = True) -> dict[str, np.ndarray]:
    """Flax params -> PyTorch ``BartForConditionalGeneration`` state dict (numpy arrays).

    With ``include_tied``, the tied token embeddings and LM head are there too, as the same
    array as ``model.shared`` (the full ``state_dict()`` of the PyTorch model). Without,
    they are left out, as transformers' ``save_pretrained`` does: a weights file then holds
    the embedding once, and transformers (4 and 5) re-ties the rest when loading.
    """
    state_dict = {}
    for path, array in traverse_util.flatten_dict(params).items():
        name, transpose = pytorch_name_for(path)
        array = np.asarray(array)
        state_dict[name] = np.ascontiguousarray(array.T if transpose else array)
    if include_tied:
        for tied in TIED_TO_SHARED:
            state_dict[tied] = state_dict["model.shared.weight"]
    return state_dict


def flax_tree_from_msgpack(data: bytes) -> dict:
    """Read a transformers ``flax_model.msgpack`` into a params dict.

    ``FlaxBartModel`` files have no ``model`` level and no ``final_logits_bias``; they
    are returned with the PyTorch-style names so the same checks apply.
    """
    from flax import serialization

    tree = serialization.msgpack_restore(data)
    flat = traverse_util.flatten_dict(tree)
    state_dict = {}
    for path, array in flat.items():
        name, transpose = pytorch_name_for(path)
        state_dict[name] = np.asarray(array).T if transpose else np.asarray(array)
    return state_dict


def read_state_dict(weights_file: Path) -> dict[str, np.ndarray]:
    """Read one weights file into PyTorch-named numpy arrays (float32 for bfloat16)."""
    if weights_file.name.endswith(".safetensors"):
        # The flax backend reads bfloat16 too, and needs no torch.
        from safetensors.flax import load_file

        return {name: to_numpy(array) for name, array in load_file(str(weights_file)).items()}
    if weights_file.name == FLAX_FILE:
        return flax_tree_from_msgpack(weights_file.read_bytes())
    if weights_file.suffix == ".bin":
        import torch

        # weights_only refuses arbitrary pickled objects: a .bin file cannot run code.
        tensors = torch.load(weights_file, map_location="cpu", weights_only=True)
        return {name: tensor.float().numpy() for name, tensor in tensors.items()}
    raise WeightLoadError(f"{weights_file}: unknown weights format")


def to_numpy(array) -> np.ndarray:
    array = np.asarray(array)
    # numpy has no native bfloat16 arithmetic; the model keeps float32 master weights.
    return array.astype(np.float32) if array.dtype.name == "bfloat16" else array
