"""Per-device bytes of params and optimizer state in each sharding mode, from the real rules.

    python -m scripts.sharding_memory                          # kobart-base on 16 devices
    python -m scripts.sharding_memory --config configs/tiny.py --devices 8

The train state's shapes come from ``jax.eval_shape`` (nothing is allocated), its shardings
from :func:`kobart_flax.sharding.state_shardings` on a mesh of ``--devices`` devices; each
leaf counts with the shape of one device's shard. Without enough devices, the script reruns
itself with that many simulated CPU devices.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import jax
from transformers import BartConfig

from kobart_flax import checkpoint, optim, sharding, steps
from kobart_flax.config import MeshConfig, ModelConfig, TrainConfig, load_config, mesh_axis_sizes
from scripts.simulate_pod import process_env

# The meshes worth comparing on a v4-32; -1 takes the devices the others leave.
MODES = (
    ("data parallel", MeshConfig(data=-1)),
    ("FSDP", MeshConfig(data=1, fsdp=-1)),
    ("data x FSDP (4 per host)", MeshConfig(data=-1, fsdp=4)),
    ("tensor parallel (4 per host)", MeshConfig(data=-1, tensor=4)),
    ("FSDP x tensor (4 per host)", MeshConfig(data=1, fsdp=-1, tensor=4)),
)
MIB = 2**20


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


def shard_bytes(tree, shardings) -> int:
    """Bytes one device holds of ``tree`` (every sharding here splits evenly)."""
    return sum(
        math.prod(leaf_sharding.shard_shape(leaf.shape)) * leaf.dtype.itemsize
        for leaf, leaf_sharding in zip(
            jax.tree.leaves(tree), jax.tree.leaves(shardings), strict=True
        )
    )


def report(model: ModelConfig, train: TrainConfig, devices: int) -> list[str]:
    state = abstract_train_state(model, train)
    lines = [
        f"| mode ({devices} devices) | mesh data x fsdp x tensor | params MiB | "
        "optimizer state MiB | total MiB per device |",
        "|---|---|---:|---:|---:|",
    ]
    for name, mesh_config in MODES:
        axis_sizes = mesh_axis_sizes(mesh_config, devices)
        mesh = sharding.make_mesh(axis_sizes, jax.devices()[:devices])
        shardings = sharding.state_shardings(state, mesh)
        params = shard_bytes(state.params, shardings.params)
        opt_state = shard_bytes(state.opt_state, shardings.opt_state)
        mesh_shape = " x ".join(str(axis_sizes[axis]) for axis in sharding.MESH_AXES)
        lines.append(
            f"| {name} | {mesh_shape} | {params / MIB:,.1f} | {opt_state / MIB:,.1f} | "
            f"{(params + opt_state) / MIB:,.1f} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/kobart_base.py")
    parser.add_argument("--devices", type=int, default=16)
    args = parser.parse_args(argv)
    if jax.device_count() < args.devices:
        if os.environ.get("JAX_NUM_CPU_DEVICES") == str(args.devices):
            raise SystemExit(f"asked for {args.devices} CPU devices, got {jax.device_count()}")
        own_args = sys.argv[1:] if argv is None else argv
        command = [sys.executable, "-m", "scripts.sharding_memory", *own_args]
        os.execve(sys.executable, command, process_env(args.devices))
    config = load_config(args.config)
    print("\n".join(report(config.model, config.train, args.devices)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
