"""Per-chip memory of a train step in each sharding mode, and whether it fits a v4 chip.

    python -m scripts.sharding_memory                          # kobart-base on a v4-32
    python -m scripts.sharding_memory train.batch_size=2048    # any config override
    python -m scripts.sharding_memory --config configs/tiny.py --devices 8

The train state's shapes come from ``jax.eval_shape`` (nothing is allocated) and each leaf's
split from :func:`kobart_flax.sharding.partition_spec`, the rules the run uses, for the mode's
mesh sizes; a leaf counts with the shape of one chip's shard. Gradients, FSDP-gathered
weights and activations are estimated from the model's shapes at the configured batch and
lengths (see :func:`gathered_bytes` and :func:`activation_bytes`): what a step keeps at its
peak, not XLA's own figure, which ``jax.jit(...).lower(...).compile().memory_analysis()``
gives on the chip itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import sys

import jax
from transformers import BartConfig

from kobart_flax import checkpoint, optim, sharding, steps
from kobart_flax.config import (
    Config,
    ConfigError,
    MeshConfig,
    ModelConfig,
    TrainConfig,
    mesh_axis_sizes,
    validate,
)
from kobart_flax.overrides import apply_overrides, load_config

# The meshes worth comparing on a v4-32; -1 takes the devices the others leave.
MODES = (
    ("data parallel", MeshConfig(data=-1)),
    ("FSDP", MeshConfig(data=1, fsdp=-1)),
    ("data x FSDP (4 per host)", MeshConfig(data=-1, fsdp=4)),
    ("tensor parallel (4 per host)", MeshConfig(data=-1, tensor=4)),
    ("FSDP x tensor (4 per host)", MeshConfig(data=1, fsdp=-1, tensor=4)),
)
MIB = 2**20
V4_HBM_BYTES = 32 * 2**30  # HBM per TPU v4 chip
COMPUTE_BYTES = {"float32": 4, "bfloat16": 2}
# What FSDP gathers together: a layer, or a leaf of its own (the shared embedding).
_LAYER = re.compile(r"(?:en|de)coder/layers/\d+/")


@dataclasses.dataclass(frozen=True)
class ModeMemory:
    """Bytes one chip holds in a sharding mode, by kind."""

    name: str
    axis_sizes: dict[str, int]
    rows: int  # examples of a micro-batch per batch shard (per chip)
    params: int
    opt_state: int
    grads: int
    gathers: int
    activations: int

    @property
    def total(self) -> int:
        return self.params + self.opt_state + self.grads + self.gathers + self.activations

    @property
    def fits(self) -> bool:
        return self.total <= V4_HBM_BYTES


def bart_config(model: ModelConfig) -> BartConfig:
    return BartConfig(
        vocab_size=model.vocab_size,
        d_model=model.d_model,
        encoder_layers=model.encoder_layers,
        decoder_layers=model.decoder_layers,
        encoder_attention_heads=model.attention_heads,
        decoder_attention_heads=model.attention_heads,
        encoder_ffn_dim=model.ffn_dim,
        decoder_ffn_dim=model.ffn_dim,
        max_position_embeddings=model.max_position_embeddings,
    )


def abstract_train_state(model: ModelConfig, train: TrainConfig) -> steps.TrainState:
    params = checkpoint.abstract_params(bart_config(model).to_dict())
    # The schedule's length changes no shape; any will do.
    schedule = optim.learning_rate_schedule(train.learning_rate, 1000, train.warmup_ratio)
    optimizer = optim.make_optimizer(schedule, train.weight_decay, train.max_grad_norm)
    return jax.eval_shape(
        lambda p: steps.create_train_state(p, optimizer, jax.random.key(0)), params
    )


def leaf_shard_bytes(path: str, leaf, axis_sizes: dict[str, int]) -> int:
    """Bytes of one chip's shard of a leaf (every split the rules allow divides evenly)."""
    spec = sharding.partition_spec(path, tuple(leaf.shape), axis_sizes)
    shard = [
        size // math.prod(axis_sizes[axis] for axis in _as_tuple(axes))
        for size, axes in zip(leaf.shape, spec, strict=True)
    ]
    return math.prod(shard) * leaf.dtype.itemsize


def _as_tuple(axes) -> tuple[str, ...]:
    if axes is None:
        return ()
    return axes if isinstance(axes, tuple) else (axes,)


def _leaves(tree) -> list[tuple[str, jax.ShapeDtypeStruct]]:
    return [
        (sharding.leaf_path(path), leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    ]


def state_bytes(state: steps.TrainState, axis_sizes: dict[str, int]) -> dict[str, int]:
    """Bytes one chip holds of each field of the train state ("params", "opt_state", ...)."""
    # Paths from the state's root: the optimizer-state rules match "opt_state/..." paths.
    held: dict[str, int] = {}
    for path, leaf in _leaves(state):
        field = path.split("/", 1)[0]
        held[field] = held.get(field, 0) + leaf_shard_bytes(path, leaf, axis_sizes)
    return held


def gathered_bytes(params, axis_sizes: dict[str, int]) -> int:
    """Bytes of weights FSDP gathers on one chip at a time, on top of its own shards.

    XLA all-gathers a layer's fsdp-split weights just before they are used, forward and
    backward, and reduce-scatters its gradients just after. Counted: the two largest units
    (a layer, or the shared embedding / LM head) whole over fsdp (still split over tensor), at
    the params' float32: the one computing and the next one being gathered, or in backward one
    unit's weights and its gradients before the reduce-scatter. Nothing without fsdp.
    """
    if axis_sizes[sharding.FSDP_AXIS] == 1:
        return 0
    unsplit_fsdp = {**axis_sizes, sharding.FSDP_AXIS: 1}
    units: dict[str, int] = {}
    for path, leaf in _leaves(params):
        if sharding.FSDP_AXIS not in {
            axis
            for axes in sharding.partition_spec(path, tuple(leaf.shape), axis_sizes)
            for axis in _as_tuple(axes)
        }:
            continue  # whole on every chip already (the position tables)
        layer = _LAYER.search(path)
        unit = path[: layer.end()] if layer else path
        units[unit] = units.get(unit, 0) + leaf_shard_bytes(path, leaf, unsplit_fsdp)
    return sum(sorted(units.values())[-2:])


def activation_bytes(model: ModelConfig, rows: int, source: int, target: int, tensor: int) -> int:
    """Bytes one chip keeps from the forward pass for the backward pass (no rematerialization).

    ``rows`` examples of ``source`` / ``target`` tokens; c = bytes of the compute dtype; heads,
    FFN width and vocabulary split over ``tensor`` (h = heads / tensor, f = ffn / tensor,
    v = vocab / tensor), d_model whole (d); a dropout mask is 1 byte (bool) per element.
    Per layer, what each op's backward reads:

    - attention over q query and k key tokens: its input [q, d] (the q projection's; in
      self-attention also k/v's), q and the attended values [q, d / tensor] each, k and v
      [k, d / tensor] each, the float32 softmax output and its compute-dtype copy [h, q, k]
      (the softmax's and the weights x values backward), the output's dropout mask and the
      LayerNorm's input [q, d];
    - FFN: its input [q, d], fc1's output and GELU's output [q, f], dropout mask and
      LayerNorm input [q, d];
    - embeddings: layernorm_embedding's input and the dropout mask [tokens, d];
    - cross-attention reads the encoder output [source, d] once for every decoder layer;
    - LM head: its input [target, d], the loss's float32 log-softmax [target, v] and, as
      backward starts, the logits' gradient in float32 and the compute dtype [target, v].

    So per example, with S source and T target tokens:
        encoder = encoder_layers * (attention(S, S) + ffn(S)) + embed(S)
        decoder = decoder_layers * (attention(T, T) + attention(T, S) + ffn(T)) + embed(T) + c S d
        head    = T * (c d + (4 + 4 + c) v)
    """
    c = COMPUTE_BYTES[model.dtype]
    d, h = model.d_model, model.attention_heads // tensor
    f, v = model.ffn_dim // tensor, model.vocab_size // tensor
    mask = 1 if model.dropout > 0 else 0
    # The dropped-out copy of the attention weights and its mask, when attention dropout is on.
    score_bytes = 4 + c + (1 + c if model.attention_dropout > 0 else 0)

    def attention(queries: int, keys: int) -> int:
        per_query = c * d + 2 * c * d // tensor + mask * d + c * d
        return queries * per_query + keys * 2 * c * d // tensor + h * queries * keys * score_bytes

    def ffn(tokens: int) -> int:
        return tokens * (c * d + 2 * c * f + mask * d + c * d)

    def embed(tokens: int) -> int:
        return tokens * (c * d + mask * d)

    encoder = model.encoder_layers * (attention(source, source) + ffn(source)) + embed(source)
    decoder = (
        model.decoder_layers * (attention(target, target) + attention(target, source) + ffn(target))
        + embed(target)
        + c * source * d
    )
    head = target * (c * d + (4 + 4 + c) * v)
    return rows * (encoder + decoder + head)


def lengths(config: Config) -> tuple[int, int]:
    """The longest (source, target) a training batch has: what the memory must hold."""
    data = config.data
    if data.packing:
        return data.packed_source_length, data.packed_target_length
    return data.max_source_length, data.max_target_length


def with_model_architecture(config: Config) -> Config:
    """``config`` with the architecture fields of its ``model.pretrained``, if set."""
    model = config.model.with_pretrained_architecture()
    if model is None:  # a hub model not in the cache yet: transformers downloads config.json
        model = config.model.with_architecture(
            BartConfig.from_pretrained(config.model.pretrained).to_dict()
        )
    return dataclasses.replace(config, model=model)


def estimate(config: Config, devices: int) -> list[ModeMemory]:
    """Per-chip bytes of each of :data:`MODES` on ``devices`` chips."""
    config = with_model_architecture(config)
    state = abstract_train_state(config.model, config.train)
    source, target = lengths(config)
    modes = []
    for name, mesh_config in MODES:
        # The run's own checks: the batch must split over the batch shards, tensor divide heads.
        validate(dataclasses.replace(config, mesh=mesh_config), device_count=devices)
        axis_sizes = mesh_axis_sizes(mesh_config, devices)
        shards = axis_sizes[sharding.DATA_AXIS] * axis_sizes[sharding.FSDP_AXIS]
        rows = config.train.batch_size // config.train.grad_accum_steps // shards
        held = state_bytes(state, axis_sizes)
        params = held["params"]
        modes.append(
            ModeMemory(
                name=name,
                axis_sizes=axis_sizes,
                rows=rows,
                params=params,
                opt_state=held["opt_state"],
                # float32, split like the params; with accumulation, the running sum too.
                grads=params * (1 if config.train.grad_accum_steps == 1 else 2),
                gathers=gathered_bytes(state.params, axis_sizes),
                activations=activation_bytes(
                    config.model, rows, source, target, axis_sizes[sharding.TENSOR_AXIS]
                ),
            )
        )
    return modes


def report(config: Config, devices: int) -> list[str]:
    source, target = lengths(config)
    lines = [
        f"| mode ({devices} chips) | mesh data x fsdp x tensor | examples per chip | "
        "params MiB | optimizer state MiB | gradients MiB | FSDP gathers MiB | "
        "activations MiB | total MiB per chip | fits v4's 32 GiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for mode in estimate(config, devices):
        mesh_shape = " x ".join(str(size) for size in mode.axis_sizes.values())
        sizes = (mode.params, mode.opt_state, mode.grads, mode.gathers, mode.activations)
        verdict = "yes" if mode.fits else "no"
        lines.append(
            f"| {mode.name} | {mesh_shape} | {mode.rows} x {source} + {target} tokens | "
            + " | ".join(f"{size / MIB:,.1f}" for size in sizes)
            + f" | {mode.total / MIB:,.1f} | {verdict} ({mode.total / V4_HBM_BYTES:.0%}) |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/kobart_base.py")
    parser.add_argument("--devices", type=int, default=16)
    parser.add_argument("overrides", nargs="*", help="section.field=value, as train_flax.py")
    args = parser.parse_args(argv)
    try:
        config = apply_overrides(load_config(args.config), args.overrides)
        print("\n".join(report(config, args.devices)))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
