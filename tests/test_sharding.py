"""Sharding rules on KoBART's real shapes, the mesh, and batches split over data x fsdp."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec
from tiny_models import tiny_kobart_config

from kobart_flax import FlaxBartForConditionalGeneration, optim, sharding, train
from kobart_flax.config import Config, ConfigError, mesh_axis_sizes, validate
from kobart_flax.overrides import apply_overrides, load_config
from kobart_flax.sharding import FSDP_AXIS, TENSOR_AXIS, ShardingError, partition_spec
from scripts.sharding_memory import abstract_train_state

# The v4-32 meshes worth having, and a few that stress the rules.
MESHES_OF_16 = [
    {"data": 16, "fsdp": 1, "tensor": 1},
    {"data": 1, "fsdp": 16, "tensor": 1},
    {"data": 4, "fsdp": 4, "tensor": 1},
    {"data": 4, "fsdp": 1, "tensor": 4},
    {"data": 1, "fsdp": 4, "tensor": 4},
    {"data": 1, "fsdp": 1, "tensor": 16},
]


@pytest.fixture(scope="module")
def kobart_state():
    """The abstract train state of kobart-base (124M params), allocated nowhere."""
    config = load_config("configs/kobart_base.py")
    return abstract_train_state(config.model, config.train)


def paths_and_leaves(tree) -> list[tuple[str, jax.ShapeDtypeStruct]]:
    return [
        (sharding.leaf_path(path), leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    ]


def as_tuple(axes) -> tuple[str, ...]:
    return axes if isinstance(axes, tuple) else (axes,)


def split_size(axes, axis_sizes) -> int:
    return math.prod(axis_sizes[name] for name in as_tuple(axes))


@pytest.mark.parametrize("axis_sizes", MESHES_OF_16, ids=lambda s: "x".join(map(str, s.values())))
def test_every_leaf_has_a_rule_and_every_split_divides(kobart_state, axis_sizes):
    leaves = paths_and_leaves(kobart_state)
    assert len(leaves) > 100
    for path, leaf in leaves:
        spec = partition_spec(path, leaf.shape, axis_sizes)  # raises on an unmatched leaf
        assert len(spec) == len(leaf.shape), path
        for size, axes in zip(leaf.shape, spec, strict=True):
            if axes is not None:
                assert size % split_size(axes, axis_sizes) == 0, (path, leaf.shape, spec)
        if "embed_positions" in path:
            assert spec == PartitionSpec(None, None), "1028 rows divide nothing: kept whole"


def test_optimizer_state_is_sharded_like_the_param_it_mirrors(kobart_state):
    axis_sizes = {"data": 1, "fsdp": 4, "tensor": 4}
    param_specs = {
        path.removeprefix("params/"): partition_spec(path, leaf.shape, axis_sizes)
        for path, leaf in paths_and_leaves(kobart_state.params)
    }
    moments = [
        (path, leaf)
        for path, leaf in paths_and_leaves(kobart_state.opt_state)
        if "/mu/" in path or "/nu/" in path
    ]
    assert len(moments) == 2 * len(param_specs)
    for path, leaf in moments:
        param_path = path.split("/mu/")[-1].split("/nu/")[-1]
        assert partition_spec(path, leaf.shape, axis_sizes) == param_specs[param_path], path


@pytest.mark.parametrize("tensor", [1, 4])
def test_fsdp_leaves_no_device_a_whole_param_or_moment(kobart_state, tensor):
    axis_sizes = {"data": 1, "fsdp": 16 // tensor, "tensor": tensor}
    for path, leaf in paths_and_leaves(kobart_state):
        spec = partition_spec(path, leaf.shape, axis_sizes)
        split_over = {name for axes in spec if axes for name in as_tuple(axes)}
        if "embed_positions" in path or not leaf.shape:
            # The position tables (3 MiB each), the step counters and the dropout key.
            assert not split_over, path
        elif tensor == 1:
            assert split_over == {FSDP_AXIS}, (path, leaf.shape, spec)
        else:  # a q/k/v bias has one dimension, and tensor parallelism took it
            assert split_over, (path, leaf.shape, spec)


def test_data_parallel_replicates_everything(kobart_state):
    axis_sizes = {"data": 16, "fsdp": 1, "tensor": 1}
    for path, leaf in paths_and_leaves(kobart_state):
        assert all(axes is None for axes in partition_spec(path, leaf.shape, axis_sizes))


def test_tensor_parallel_splits_heads_ffn_and_vocab_like_megatron():
    tensor = {"data": 4, "fsdp": 1, "tensor": 4}
    both = {"data": 1, "fsdp": 4, "tensor": 4}
    layer = "params/model/encoder/layers/0"
    expected = {
        # path: (shape, spec with tensor only, spec with fsdp and tensor)
        f"{layer}/self_attn/q_proj/kernel": (
            (768, 768),
            (None, TENSOR_AXIS),
            (FSDP_AXIS, TENSOR_AXIS),
        ),
        f"{layer}/self_attn/v_proj/bias": ((768,), (TENSOR_AXIS,), (TENSOR_AXIS,)),
        f"{layer}/self_attn/out_proj/kernel": (
            (768, 768),
            (TENSOR_AXIS, None),
            (TENSOR_AXIS, FSDP_AXIS),
        ),
        f"{layer}/self_attn/out_proj/bias": ((768,), (None,), (FSDP_AXIS,)),
        f"{layer}/fc1/kernel": ((768, 3072), (None, TENSOR_AXIS), (FSDP_AXIS, TENSOR_AXIS)),
        f"{layer}/fc2/kernel": ((3072, 768), (TENSOR_AXIS, None), (TENSOR_AXIS, FSDP_AXIS)),
        f"{layer}/final_layer_norm/scale": ((768,), (None,), (FSDP_AXIS,)),
        # The vocabulary rows take fsdp too: the lookup's gradient scatters into rows.
        "params/model/shared/embedding": (
            (30000, 768),
            (TENSOR_AXIS, None),
            ((TENSOR_AXIS, FSDP_AXIS), None),
        ),
        "params/final_logits_bias": (
            (1, 30000),
            (None, TENSOR_AXIS),
            (None, (TENSOR_AXIS, FSDP_AXIS)),
        ),
        "params/model/decoder/embed_positions/embedding": ((1028, 768), (None, None), (None, None)),
    }
    for path, (shape, tensor_spec, both_spec) in expected.items():
        assert partition_spec(path, shape, tensor) == PartitionSpec(*tensor_spec), path
        assert partition_spec(path, shape, both) == PartitionSpec(*both_spec), path


def test_unmatched_leaves_and_impossible_splits_are_errors():
    sizes = {"data": 1, "fsdp": 1, "tensor": 5}
    with pytest.raises(ShardingError, match="params/model/adapter/kernel: no sharding rule"):
        partition_spec("params/model/adapter/kernel", (4, 4), sizes)
    with pytest.raises(ShardingError, match=r"fc1/kernel: dimension 1 \(mlp, size 3072\) does not"):
        partition_spec("params/model/encoder/layers/0/fc1/kernel", (768, 3072), sizes)
    with pytest.raises(ShardingError, match="names 2 dimensions"):
        partition_spec("params/model/encoder/layers/0/fc1/kernel", (768,), sizes)


def test_mesh_puts_tensor_innermost_and_checks_the_device_count():
    devices = jax.devices()[:2]
    mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 2}, devices)
    assert mesh.axis_names == ("data", "fsdp", "tensor")
    assert mesh.devices.shape == (1, 1, 2)
    with pytest.raises(ShardingError, match="needs 4 devices, there are 2"):
        sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 1}, devices)


def test_hosts_must_split_each_batch_evenly():
    assert sharding.check_even_split({0: {0, 1}, 1: {2, 3}}, 4) is None
    assert sharding.check_even_split({0: {2, 3}, 1: {0, 1}}, 4) is None  # any disjoint order
    # tensor=16 on 4 hosts: one batch shard that every host would have to read.
    assert "do not split between 4 processes" in sharding.check_even_split(
        {0: {0}, 1: {0}, 2: {0}, 3: {0}}, 1
    )
    assert "overlap" in sharding.check_even_split({0: {0, 1}, 1: {1, 2}}, 4)
    assert (
        sharding.layout_problem(sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 2}).devices)
        is None
    )


def test_state_created_sharded_and_batches_split_over_data_and_fsdp():
    mesh = sharding.make_mesh({"data": 1, "fsdp": 2, "tensor": 1})
    params = {"model": {"encoder": {"layers": {"0": {"fc1": {"kernel": np.ones((4, 6))}}}}}}
    shardings = sharding.state_shardings(params, mesh)
    on_mesh = jax.jit(lambda p: p, out_shardings=shardings)(params)
    kernel = on_mesh["model"]["encoder"]["layers"]["0"]["fc1"]["kernel"]
    assert kernel.sharding.spec == PartitionSpec(None, FSDP_AXIS)  # the larger dim, 6
    assert [shard.data.shape for shard in kernel.addressable_shards] == [(4, 3), (4, 3)]

    batch = {"input_ids": np.arange(8, dtype=np.int32).reshape(4, 2)}
    global_batch = sharding.global_batch(batch, mesh)["input_ids"]
    assert global_batch.sharding.spec == PartitionSpec(("data", "fsdp"))
    assert [shard.data.shape for shard in global_batch.addressable_shards] == [(2, 2), (2, 2)]
    np.testing.assert_array_equal(np.asarray(global_batch), batch["input_ids"])


# --- the mesh section of the config ------------------------------------------------------


def config_with(overrides: str) -> Config:
    """The default Config with space-separated ``section.field=value`` overrides, as typed
    after train_flax.py."""
    return apply_overrides(Config(), overrides.split())


@pytest.mark.parametrize(
    ("overrides", "devices", "sizes"),
    [
        ("", 16, {"data": 16, "fsdp": 1, "tensor": 1}),
        ("mesh.data=1 mesh.fsdp=-1", 16, {"data": 1, "fsdp": 16, "tensor": 1}),
        ("mesh.fsdp=2 mesh.tensor=4", 16, {"data": 2, "fsdp": 2, "tensor": 4}),
        ("mesh.data=2 mesh.fsdp=2 mesh.tensor=2", 8, {"data": 2, "fsdp": 2, "tensor": 2}),
    ],
)
def test_mesh_sizes_fill_the_devices(overrides, devices, sizes):
    assert mesh_axis_sizes(config_with(overrides).mesh, devices) == sizes


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ("mesh.data=-1 mesh.fsdp=-1", "at most one size may be -1"),
        ("mesh.tensor=0", "each size must be positive, or -1"),
        ("mesh.tensor=3", "mesh.data=-1 x mesh.fsdp=1 x mesh.tensor=3 does not fit 16"),
        ("mesh.data=4 mesh.fsdp=2", "mesh.data=4 x mesh.fsdp=2 x mesh.tensor=1 does not fit 16"),
    ],
)
def test_impossible_meshes_name_their_sizes(overrides, message):
    config = config_with(overrides)
    with pytest.raises(ConfigError, match=message):
        mesh_axis_sizes(config.mesh, 16)
    with pytest.raises(ConfigError, match=message.split(" does not")[0]):
        validate(config, device_count=16)


def test_tensor_parallelism_must_divide_heads_ffn_and_vocabulary():
    config = config_with("model.attention_heads=6 model.d_model=96 mesh.tensor=4")
    with pytest.raises(ConfigError, match="mesh.tensor=4: does not divide model.attention_heads=6"):
        validate(config)


def test_batch_must_divide_the_batch_shards_not_the_devices():
    # tensor=4 on 16 devices: 4 batch shards, each fed to a tensor group of 4 devices.
    validate(config_with("train.batch_size=8 mesh.tensor=4"), device_count=16)
    with pytest.raises(ConfigError, match="8 examples per micro-batch, not divisible by 16 dev"):
        validate(config_with("train.batch_size=8"), device_count=16)
    with pytest.raises(ConfigError, match=r"not divisible by 8 batch shards \(mesh.data x mesh"):
        validate(config_with("train.batch_size=4 mesh.tensor=2"), 16)


def test_kobart_base_wants_a_v4_32():
    mesh = load_config("configs/kobart_base.py").mesh
    assert (mesh.expected_processes, mesh.expected_devices) == (4, 16)
    assert mesh_axis_sizes(mesh, 16) == {"data": 16, "fsdp": 1, "tensor": 1}


def test_train_state_is_created_in_its_sharded_layout():
    """Under FSDP no device, so no host, ever holds a whole Adam moment; values unchanged."""
    bart_config = tiny_kobart_config(64)
    model = FlaxBartForConditionalGeneration(bart_config, jnp.float32, params={})
    optimizer = optim.make_optimizer(optim.learning_rate_schedule(1e-3, 10, 0.1), 0.01, 1.0)
    sharded, _ = train.create_sharded_state(
        model, optimizer, sharding.make_mesh({"data": 1, "fsdp": 2, "tensor": 1}), seed=0
    )
    whole, _ = train.create_sharded_state(
        model, optimizer, sharding.make_data_mesh(jax.devices()[:1]), seed=0
    )
    for (path, leaf), expected in zip(
        paths_and_leaves(sharded), jax.tree.leaves(whole), strict=True
    ):
        if leaf.ndim and "embed_positions" not in path:
            shard_shapes = {shard.data.shape for shard in leaf.addressable_shards}
            assert shard_shapes == {leaf.sharding.shard_shape(leaf.shape)}, path
            assert math.prod(next(iter(shard_shapes))) == leaf.size // 2, path
        if path != "dropout_key":
            np.testing.assert_array_equal(np.asarray(leaf), np.asarray(expected), err_msg=path)
