"""Meshes on an emulated TPU v4-32: the torus mapping, host-local batches, one-line errors.

The emulated devices carry what JAX's mesh_utils reads, built as JAX's own mesh tests build
them (tests/mesh_utils_test.py): a v4 host holds a 2x2x1 block of chips, one device per chip
(megacore), numbered x fastest within the host, then hosts.
"""

import dataclasses
import itertools
import logging
import math

import jax
import numpy as np
import pytest
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from kobart_flax import sharding
from kobart_flax.config import mesh_axis_sizes
from kobart_flax.overrides import apply_overrides, load_config
from kobart_flax.sharding import MESH_AXES, ShardingError

HOST_BLOCK = (2, 2, 1)  # the chips of one v4 host, in x, y, z


@dataclasses.dataclass(frozen=True)
class EmulatedTpu:
    id: int
    platform: str
    device_kind: str
    process_index: int
    coords: tuple[int, int, int]
    core_on_chip: int
    slice_index: int = 0


def v4_devices(x: int, y: int, z: int, slices: int = 1) -> list[EmulatedTpu]:
    """jax.devices() of ``slices`` TPU v4 slices of x * y * z chips."""
    hosts = tuple(size // block for size, block in zip((x, y, z), HOST_BLOCK, strict=True))
    devices = []
    for slice_index, zp, yp, xp in itertools.product(
        range(slices), range(hosts[2]), range(hosts[1]), range(hosts[0])
    ):
        process = xp + hosts[0] * (yp + hosts[1] * (zp + hosts[2] * slice_index))
        for yd, xd in itertools.product(range(2), range(2)):
            coords = (xd + 2 * xp, yd + 2 * yp, zp)
            devices.append(
                EmulatedTpu(len(devices), "tpu", "TPU v4", process, coords, 0, slice_index)
            )
    return devices


V4_32 = v4_devices(2, 2, 4)


# The sharding modes docs/pods.md recommends for a v4-32, as the overrides it gives for them,
# and the mesh each makes of kobart_base.py on 16 devices.
V4_32_MODES = {
    "mesh.data=-1": {"data": 16, "fsdp": 1, "tensor": 1},
    "mesh.data=1 mesh.fsdp=16": {"data": 1, "fsdp": 16, "tensor": 1},
    "mesh.tensor=4": {"data": 4, "fsdp": 1, "tensor": 4},
    "mesh.data=1 mesh.fsdp=4 mesh.tensor=4": {"data": 1, "fsdp": 4, "tensor": 4},
}


def groups_along(grid: np.ndarray, axis: int) -> list[list[EmulatedTpu]]:
    """The device groups that one mesh axis's collectives run over."""
    # [data, fsdp, tensor] --> [other two axes flattened, size of axis]
    moved = np.moveaxis(grid, axis, -1)
    return [list(row) for row in moved.reshape(-1, grid.shape[axis])]


def is_box(group: list[EmulatedTpu]) -> bool:
    """Whether the chips fill a cuboid of the torus: physical neighbours, no gaps."""
    coords = np.array([device.coords for device in group])
    return math.prod(coords.max(0) - coords.min(0) + 1) == len(group)


def assert_every_device_once(grid: np.ndarray, devices: list[EmulatedTpu]) -> None:
    assert sorted(device.id for device in grid.flat) == [device.id for device in devices]


@pytest.mark.parametrize(("overrides", "axis_sizes"), V4_32_MODES.items())
def test_the_documented_overrides_make_the_documented_meshes(overrides, axis_sizes):
    config = apply_overrides(load_config("configs/kobart_base.py"), overrides.split())
    assert mesh_axis_sizes(config.mesh, 16) == axis_sizes


@pytest.mark.parametrize(
    "axis_sizes",
    [*V4_32_MODES.values(), {"data": 4, "fsdp": 4, "tensor": 1}],
    ids=lambda sizes: "x".join(map(str, sizes.values())),
)
def test_v4_32_modes_map_onto_whole_torus_axes(axis_sizes):
    grid, splits = sharding.device_grid(axis_sizes, V4_32)
    assert not splits
    assert grid.shape == tuple(axis_sizes.values())
    assert_every_device_once(grid, V4_32)
    for axis in range(3):
        assert all(is_box(group) for group in groups_along(grid, axis)), MESH_AXES[axis]
    # Tensor parallelism's per-layer collectives never leave a host.
    for group in groups_along(grid, 2):
        assert len({device.process_index for device in group}) == 1
    # Each of the 4 hosts feeds its own, equal share of the batch shards.
    owned = sharding.batch_shards_by_process(grid)
    shards = axis_sizes["data"] * axis_sizes["fsdp"]
    assert sorted(owned) == [0, 1, 2, 3]
    assert all(len(held) == shards // 4 for held in owned.values())
    assert set().union(*owned.values()) == set(range(shards))
    assert sharding.layout_problem(grid) is None


@pytest.mark.parametrize(
    "shape", [(16, 1, 1), (1, 16, 1), (4, 4, 1), (4, 1, 4), (1, 4, 4), (2, 2, 4), (1, 8, 2)]
)
def test_batch_shards_by_process_is_what_the_batch_sharding_gives(shape):
    """The grid arithmetic agrees with JAX's own placement of a batch split over data x fsdp."""
    grid, _ = sharding.device_grid(dict(zip(MESH_AXES, shape, strict=True)), V4_32)
    mesh = Mesh(grid, MESH_AXES)
    rows = shape[0] * shape[1]
    from_jax: dict[int, set[int]] = {}
    for device, index in (
        NamedSharding(mesh, PartitionSpec(("data", "fsdp"))).devices_indices_map((rows,)).items()
    ):
        from_jax.setdefault(device.process_index, set()).add(index[0].start or 0)
    assert sharding.batch_shards_by_process(grid) == from_jax


def test_v4_32_data2_fsdp2_tensor4_splits_the_z_axis_and_keeps_tensor_on_a_host():
    axis_sizes = {"data": 2, "fsdp": 2, "tensor": 4}
    # What jax.make_mesh runs on a v4, and why the README's old example was a traceback.
    with pytest.raises(NotImplementedError):
        mesh_utils.create_device_mesh((2, 2, 4), V4_32)
    grid, splits = sharding.device_grid(axis_sizes, V4_32)
    assert splits
    assert grid.shape == (2, 2, 4)
    assert_every_device_once(grid, V4_32)
    for group in groups_along(grid, 2):  # a host's 2x2 chips
        assert is_box(group) and len({device.process_index for device in group}) == 1
    # z = 4 split: fsdp pairs are neighbours, data pairs two chips apart.
    for group in groups_along(grid, 1):
        assert sorted(abs(a - b) for a, b in zip(*(d.coords for d in group), strict=True)) == [
            0,
            0,
            1,
        ]
    for group in groups_along(grid, 0):
        assert [abs(a - b) for a, b in zip(*(d.coords for d in group), strict=True)] == [0, 0, 2]
    assert sharding.layout_problem(grid) is None


def test_a_split_layout_builds_a_mesh_and_warns_with_the_whole_axis_ones(caplog):
    with caplog.at_level(logging.WARNING, logger="kobart_flax.sharding"):
        mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 4}, V4_32)
    assert mesh.devices.shape == (2, 2, 4) and mesh.axis_names == MESH_AXES
    (warning,) = caplog.messages
    assert "mesh data=2 x fsdp=2 x tensor=4 takes no whole axes of the TPU torus" in warning
    assert "1x4x4" in warning and "2x2x4" not in warning


def test_a_layout_whose_hosts_cannot_feed_their_rows_names_the_ones_that_work():
    with pytest.raises(ShardingError) as error:
        sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 16}, V4_32)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("mesh data=1 x fsdp=1 x tensor=16: 1 batch shard(s)")
    workable = message.split("data x fsdp x tensor = ")[1].split(", ")
    # A tensor group wider than a host's 4 chips makes hosts share batch shards.
    assert set(workable) == {
        f"{d}x{f}x{16 // d // f}"
        for d in (1, 2, 4, 8, 16)
        for f in (1, 2, 4, 8, 16)
        if 16 % (d * f) == 0 and 16 // d // f <= 4
    }
    assert len(workable) == 12
    assert {shape for shape, splits in sharding.layouts(V4_32) if splits} == {"2x2x4"}


def test_two_slices_put_the_data_axis_across_them():
    devices = v4_devices(2, 2, 4, slices=2)
    grid, splits = sharding.device_grid({"data": 2, "fsdp": 4, "tensor": 4}, devices)
    assert not splits and grid.shape == (2, 4, 4)
    assert_every_device_once(grid, devices)
    assert [{device.slice_index for device in grid[d].flat} for d in range(2)] == [{0}, {1}]
    assert sharding.layout_problem(grid) is None  # 8 hosts, 8 batch shards
    with pytest.raises(ShardingError, match="span 2 TPU slices and only mesh.data crosses"):
        sharding.device_grid({"data": 1, "fsdp": 8, "tensor": 4}, devices)


def test_cpu_devices_are_reshaped_in_order():
    """Off TPU the grid is the device list in order, as jax.make_mesh lays it."""
    devices = jax.devices()[:2]
    for shape in [(2, 1, 1), (1, 2, 1), (1, 1, 2)]:
        grid, splits = sharding.device_grid(dict(zip(MESH_AXES, shape, strict=True)), devices)
        assert not splits
        assert list(grid.flat) == devices
        assert list(sharding.make_mesh(dict(zip(MESH_AXES, shape, strict=True))).devices.flat) == (
            list(jax.make_mesh(shape, MESH_AXES, devices=devices).devices.flat)
        )
