"""Device mesh, sharding rules for the train state, and batch shardings.

The mesh has three named axes, outermost first:

- ``data``: pure data parallelism; every group along it holds the same params.
- ``fsdp``: data parallelism whose params and optimizer state are split over the group
  (ZeRO-3 / FSDP): each device stores 1/fsdp of every leaf but the scalars and the position
  tables, and XLA gathers a layer's weights where they are used and reduce-scatters their
  gradients.
- ``tensor``: tensor (Megatron) parallelism inside a layer: attention heads and FFN
  columns/rows, and the vocabulary. Innermost, so a tensor group is devices next to each
  other (one host's chips), where the per-layer collectives are cheapest.

Batches are split over ``data`` and ``fsdp`` together and replicated over ``tensor``.

Every leaf of the train state gets its sharding from one table, :data:`PARAM_RULES`: a
regex over the leaf's path (``model/encoder/layers/0/fc1/kernel``) naming the logical axis
of each dimension. Optimizer-state leaves (``opt_state/1/0/mu/model/...``) end in the path
of the param they mirror, so the same rule, matched as a path suffix, gives them the same
sharding. :func:`partition_spec` turns logical axes into mesh axes for the mesh at hand.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from kobart_flax.config import MESH_AXES, ConfigError, MeshConfig, mesh_axis_sizes

logger = logging.getLogger(__name__)

# Named after the MeshConfig fields that size them.
DATA_AXIS, FSDP_AXIS, TENSOR_AXIS = MESH_AXES
# The batch dimension is split over both data-parallel axes at once.
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)

# Logical axis names of parameter dimensions.
VOCAB = "vocab"  # rows of the shared embedding (= columns of the tied LM head)
EMBED = "embed"  # d_model
HEADS = "heads"  # attention heads x head_dim, the output of q/k/v and input of out_proj
MLP = "mlp"  # the FFN's hidden width
POSITIONS = "positions"  # rows of a learned position table (1026 + 2: divides nothing)
UNSPLIT = None  # a dimension no mode splits

# What tensor parallelism splits: whole heads, FFN columns/rows, vocabulary rows. The
# embed dimension stays whole inside a tensor group, so layer outputs need one reduction.
TENSOR_PARALLEL_AXES = frozenset({VOCAB, HEADS, MLP})
# Dimensions FSDP never splits.
FSDP_EXCLUDED_AXES = frozenset({POSITIONS, UNSPLIT})

_ATTENTION = r"(?:self_attn|encoder_attn)"
# (path suffix regex, logical axis per dimension). The first match wins; every leaf of the
# train state must match one, or building its shardings fails.
PARAM_RULES: tuple[tuple[str, tuple[str | None, ...]], ...] = (
    (r"model/shared/embedding", (VOCAB, EMBED)),
    (r"final_logits_bias", (UNSPLIT, VOCAB)),
    # 1028 rows divide nothing; the table (3 MiB) stays whole, like the lookups into it.
    (r"embed_positions/embedding", (POSITIONS, UNSPLIT)),
    # q/k/v: [d_model, heads * head_dim], split by whole heads (output columns).
    (rf"{_ATTENTION}/[qkv]_proj/kernel", (EMBED, HEADS)),
    (rf"{_ATTENTION}/[qkv]_proj/bias", (HEADS,)),
    # out_proj: [heads * head_dim, d_model], split on its input rows to match.
    (rf"{_ATTENTION}/out_proj/kernel", (HEADS, EMBED)),
    (rf"{_ATTENTION}/out_proj/bias", (EMBED,)),
    (r"fc1/kernel", (EMBED, MLP)),  # [d_model, ffn]: output columns
    (r"fc1/bias", (MLP,)),
    (r"fc2/kernel", (MLP, EMBED)),  # [ffn, d_model]: input rows
    (r"fc2/bias", (EMBED,)),
    # layernorm_embedding, self_attn_layer_norm, encoder_attn_layer_norm, final_layer_norm
    (r"(?:layernorm_embedding|\w*layer_norm)/(?:scale|bias)", (EMBED,)),
)
# Scalars of the train state outside the params: replicated everywhere.
SCALAR_RULES: tuple[tuple[str, tuple[str | None, ...]], ...] = (
    (r"^step", ()),
    (r"^dropout_key", ()),
    (r"opt_state/.*/count", ()),  # Adam's and the schedule's step counters
)
STATE_RULES = PARAM_RULES + SCALAR_RULES

_COMPILED_RULES = tuple((re.compile(rf"(?:^|/){pattern}$"), axes) for pattern, axes in STATE_RULES)


class ShardingError(ConfigError):
    """A mesh or rule that cannot shard this train state or batch; the message says why."""


class DeviceGrid(NamedTuple):
    """Devices laid out as the mesh: ``devices[d, f, t]`` is at data d, fsdp f, tensor t."""

    devices: np.ndarray  # [data, fsdp, tensor] of devices
    # True when a physical torus axis had to be shared between mesh axes (see device_grid).
    splits_physical_axes: bool


def device_grid(axis_sizes: Mapping[str, int], devices: Sequence) -> DeviceGrid:
    """Lay ``devices`` out as a (data, fsdp, tensor) mesh on their physical topology.

    Pure: it reads only the attributes JAX's mesh_utils reads (``id``, ``platform``,
    ``device_kind``, ``coords``, ``core_on_chip``, ``slice_index``), so emulated TPU
    devices test it without a TPU. On CPU it is ``jax.make_mesh``'s reshape of the device
    list. On a TPU slice ``mesh_utils.create_device_mesh`` gives each mesh axis whole axes
    of the chip torus, the innermost (tensor) first, so a tensor group of 4 on a v4 is a
    host's 2x2 chips. A shape no set of whole axes gives (v4-32, a 2x2x4 torus: data=2 x
    fsdp=2 x tensor=4, as the z axis of 4 would have to serve two mesh axes) is retried
    with ``allow_split_physical_axes``: z is split into fsdp pairs of neighbouring chips
    and data pairs two chips apart. That layout is correct and keeps tensor on one host; only
    the data axis's gradient all-reduce (once a step) crosses an intermediate chip, which
    beats refusing a layout the user asked for. jax.make_mesh does the same only on v5e.

    Over several slices (multislice, ``slice_index``), only the data axis crosses the
    slower data-center network: each slice holds data / slices of it, laid out as above.
    """
    shape = tuple(axis_sizes[name] for name in MESH_AXES)
    if math.prod(shape) != len(devices):
        raise ShardingError(
            f"mesh {_describe(axis_sizes)} needs {math.prod(shape)} devices, "
            f"there are {len(devices)}"
        )
    slices = len({getattr(device, "slice_index", 0) for device in devices})
    if slices > 1 and shape[0] % slices:
        raise ShardingError(
            f"mesh {_describe(axis_sizes)}: the devices span {slices} TPU slices and only "
            f"mesh.data crosses slices, so it must be a multiple of {slices}"
        )

    def build(split: bool) -> np.ndarray:
        if slices == 1:
            return mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=split)
        # [data / slices, fsdp, tensor] within each slice, slices stacked along data.
        per_slice = (shape[0] // slices,) + shape[1:]
        return mesh_utils.create_hybrid_device_mesh(
            per_slice, (slices, 1, 1), devices, allow_split_physical_axes=split
        )

    try:
        return DeviceGrid(build(split=False), splits_physical_axes=False)
    except NotImplementedError:  # mesh_utils: no whole torus axes fit this shape
        return DeviceGrid(build(split=True), splits_physical_axes=True)


def layout_problem(grid: np.ndarray) -> str | None:
    """Why the hosts of this [data, fsdp, tensor] device grid cannot each feed its own rows.

    Each host must feed a disjoint, equal share of every batch, e.g. 4 hosts with
    mesh.tensor=16 would leave one batch shard that every host must read whole. Which
    shards a host holds does not matter: losses and metrics are sums over the rows.
    """
    return check_even_split(batch_shards_by_process(grid), grid.shape[0] * grid.shape[1])


def layouts(devices: Sequence) -> list[tuple[str, bool]]:
    """("data x fsdp x tensor", splits physical axes) for every mesh ``devices`` take."""
    count = len(devices)
    found = []
    for data in _divisors(count):
        for fsdp in _divisors(count // data):
            sizes = {DATA_AXIS: data, FSDP_AXIS: fsdp, TENSOR_AXIS: count // data // fsdp}
            try:
                grid = device_grid(sizes, devices)
            except ShardingError:  # e.g. a data axis that the TPU slices do not divide
                continue
            if layout_problem(grid.devices) is None:
                found.append(("x".join(map(str, sizes.values())), grid.splits_physical_axes))
    return found


def _divisors(count: int) -> list[int]:
    return [size for size in range(count, 0, -1) if count % size == 0]


def make_mesh(axis_sizes: Mapping[str, int], devices: Sequence | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over ``devices`` (default: every device of every host).

    ``axis_sizes`` must be resolved (no -1) and multiply to the device count. A layout whose
    hosts cannot each feed their own batch rows stops here, before anything compiles, with
    the layouts these devices do take.
    """
    devices = jax.devices() if devices is None else devices
    grid = device_grid(axis_sizes, devices)
    problem = layout_problem(grid.devices)
    if problem:
        processes = len({device.process_index for device in devices})
        workable = ", ".join(shape for shape, _ in layouts(devices))
        raise ShardingError(
            f"mesh {_describe(axis_sizes)}: {problem}; every host reads only its own rows of "
            f"a batch, so a tensor group must not span hosts. These {len(devices)} devices of "
            f"{processes} processes take data x fsdp x tensor = {workable}"
        )
    if grid.splits_physical_axes:
        whole = ", ".join(shape for shape, splits in layouts(devices) if not splits)
        logger.warning(
            "mesh %s takes no whole axes of the TPU torus, so a physical axis is split between "
            "mesh axes: it works, with fewer links for their collectives. Layouts on whole "
            "axes: data x fsdp x tensor = %s",
            _describe(axis_sizes),
            whole,
        )
    # Auto axes: shardings are given at jit boundaries and XLA (GSPMD) places the rest.
    return Mesh(grid.devices, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def mesh_from_config(mesh_config: MeshConfig) -> Mesh:
    """The configured mesh over every device of every host, checked for multi-host input."""
    axis_sizes = mesh_axis_sizes(mesh_config, jax.device_count())
    mesh = make_mesh(axis_sizes)
    logger.info(
        "mesh %s over %d devices of %d processes",
        _describe(axis_sizes),
        jax.device_count(),
        jax.process_count(),
    )
    return mesh


def make_data_mesh(devices: list[jax.Device] | None = None) -> Mesh:
    """Pure data parallelism over ``devices``: params replicated, batches split."""
    devices = jax.devices() if devices is None else devices
    return make_mesh({DATA_AXIS: len(devices), FSDP_AXIS: 1, TENSOR_AXIS: 1}, devices)


def _describe(axis_sizes: Mapping[str, int]) -> str:
    return " x ".join(f"{name}={axis_sizes[name]}" for name in MESH_AXES)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def local_replica(tree, mesh: Mesh):
    """A whole copy of every array of ``tree``, on this process's first device.

    For work one host does alone (saving the final model, generating summaries) on arrays
    that may be split across hosts. Gathering is a collective: every process must call it.
    """
    gathered = jax.jit(lambda arrays: arrays, out_shardings=replicated(mesh))(tree)
    return jax.tree.map(lambda leaf: leaf.addressable_data(0), gathered)


# ---------------------------------------------------------------------------------------
# Train state


def leaf_path(key_path) -> str:
    """``model/encoder/layers/0/fc1/kernel`` for a key path of ``tree_flatten_with_path``."""
    return jax.tree_util.keystr(key_path, simple=True, separator="/")


def logical_axes(path: str, rank: int) -> tuple[str | None, ...]:
    """The logical axis of each dimension of the leaf at ``path``, from the first rule."""
    for pattern, axes in _COMPILED_RULES:
        if pattern.search(path):
            if len(axes) != rank:
                raise ShardingError(
                    f"{path}: the rule {pattern.pattern!r} names {len(axes)} dimensions "
                    f"{axes}, the leaf has {rank}"
                )
            return axes
    raise ShardingError(
        f"{path}: no sharding rule matches this leaf; add one to kobart_flax.sharding.PARAM_RULES"
    )


def partition_spec(
    path: str, shape: tuple[int, ...], axis_sizes: Mapping[str, int]
) -> PartitionSpec:
    """The mesh axes each dimension of a leaf is split over, on a mesh of ``axis_sizes``.

    Tensor parallelism splits the dimensions whose logical axis it covers, and insists that
    they divide. FSDP then splits the vocabulary dimension if the leaf has one (together
    with tensor), else the largest remaining dimension that divides the fsdp size (ties:
    the first); a leaf with none (the scalars) stays replicated over fsdp.
    """
    axes = logical_axes(path, len(shape))
    spec: list[str | tuple[str, str] | None] = [None] * len(shape)
    tensor_size, fsdp_size = axis_sizes[TENSOR_AXIS], axis_sizes[FSDP_AXIS]
    if tensor_size > 1:
        for dim, (size, axis) in enumerate(zip(shape, axes, strict=True)):
            if axis in TENSOR_PARALLEL_AXES:
                if size % tensor_size:
                    raise ShardingError(
                        f"{path}: dimension {dim} ({axis}, size {size}) does not divide "
                        f"mesh.tensor={tensor_size}"
                    )
                spec[dim] = TENSOR_AXIS
    if fsdp_size > 1:
        dim = _fsdp_dim(shape, axes, spec, tensor_size, fsdp_size)
        if dim is not None:
            spec[dim] = FSDP_AXIS if spec[dim] is None else (TENSOR_AXIS, FSDP_AXIS)
    return PartitionSpec(*spec)


def _fsdp_dim(
    shape: tuple[int, ...],
    axes: tuple[str | None, ...],
    spec: list,
    tensor_size: int,
    fsdp_size: int,
) -> int | None:
    """The dimension FSDP splits, if any.

    The vocabulary first, with tensor when it has it: the embedding lookup's gradient is a
    scatter into vocabulary rows, and a table split on d_model instead makes XLA re-lay out
    whole activation gradients to match it.
    """
    for dim, (size, axis) in enumerate(zip(shape, axes, strict=True)):
        if axis == VOCAB and size % (tensor_size * fsdp_size) == 0:
            return dim
    candidates = [
        dim
        for dim, (size, axis) in enumerate(zip(shape, axes, strict=True))
        if spec[dim] is None and axis not in FSDP_EXCLUDED_AXES and size % fsdp_size == 0
    ]
    return max(candidates, key=lambda dim: (shape[dim], -dim)) if candidates else None


def axis_sizes_of(mesh: Mesh) -> dict[str, int]:
    return dict(zip(mesh.axis_names, mesh.devices.shape, strict=True))


def state_shardings(abstract_state, mesh: Mesh):
    """A NamedSharding for every leaf of ``abstract_state`` (arrays or ShapeDtypeStructs).

    Works on any pytree whose leaf paths end in param paths: the whole TrainState, its
    params, a params dict.
    """
    axis_sizes = axis_sizes_of(mesh)

    def leaf_sharding(key_path, leaf) -> NamedSharding:
        spec = partition_spec(leaf_path(key_path), tuple(leaf.shape), axis_sizes)
        return NamedSharding(mesh, spec)

    return jax.tree_util.tree_map_with_path(leaf_sharding, abstract_state)


# ---------------------------------------------------------------------------------------
# Batches


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over data x fsdp, replicated over tensor."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def batch_shard_count(mesh: Mesh) -> int:
    """How many ways :func:`batch_sharding` splits a batch: mesh.data x mesh.fsdp."""
    sizes = axis_sizes_of(mesh)
    return math.prod(sizes[axis] for axis in BATCH_AXES)


def place(tree, shardings):
    """Every leaf of ``tree`` with the sharding of ``shardings`` (a matching tree, or one
    sharding for all leaves), on every host.

    Host arrays must be the same on every process (each host cuts out the shards its devices
    hold); device arrays already laid out so are used as they are.
    """

    def put(leaf, leaf_sharding):
        if isinstance(leaf, jax.Array):
            if leaf.sharding.is_equivalent_to(leaf_sharding, leaf.ndim):
                return leaf
            return jax.device_put(leaf, leaf_sharding)
        leaf = np.asarray(leaf)
        return jax.make_array_from_callback(leaf.shape, leaf_sharding, lambda index: leaf[index])

    if isinstance(shardings, NamedSharding):
        return jax.tree.map(lambda leaf: put(leaf, shardings), tree)
    return jax.tree.map(put, tree, shardings)


def batch_shards_by_process(grid: np.ndarray) -> dict[int, set[int]]:
    """The batch shards (0 .. data x fsdp - 1) that each process's devices hold.

    ``batch_sharding`` splits the batch over ("data", "fsdp") data-major: the device at
    ``grid[d, f, t]`` holds shard ``d * fsdp + f``, for every t.
    """
    fsdp = grid.shape[1]
    owned: dict[int, set[int]] = {}
    for (data_index, fsdp_index, _), device in np.ndenumerate(grid):
        owned.setdefault(device.process_index, set()).add(data_index * fsdp + fsdp_index)
    return owned


def check_even_split(owned: Mapping[int, set[int]], shards: int) -> str | None:
    """Why hosts holding these batch shards cannot each feed its own rows, or None."""
    processes = len(owned)
    if shards % processes:
        return f"{shards} batch shard(s) (data x fsdp) do not split between {processes} processes"
    seen: set[int] = set()
    for process, process_shards in sorted(owned.items()):
        if len(process_shards) != shards // processes or process_shards & seen:
            return (
                f"process {process} holds batch shards {sorted(process_shards)}, which overlap "
                f"another process's or are not {shards // processes} of the {shards}"
            )
        seen |= process_shards
    return None


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assemble each host's rows of a batch into global arrays sharded over data x fsdp.

    ``local_batch`` holds this process's slice of the global batch (what
    :func:`kobart_flax.batching.train_batches` yields for ``process_index``); every host's
    slice has the same shape, so the global batch has ``process_count`` times its rows.
    """
    sharding = batch_sharding(mesh)
    process_count = jax.process_count()
    return {
        name: jax.make_array_from_process_local_data(
            sharding, array, (array.shape[0] * process_count,) + array.shape[1:]
        )
        for name, array in local_batch.items()
    }
