"""Test-session setup shared by all test files."""

import os

import pytest

# Two simulated CPU devices, so the sharded code paths (batch split over a data mesh)
# run in every test. Must be set before jax is first imported.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
).strip()


@pytest.fixture(scope="module")
def gcs_emulator(tmp_path_factory):
    """A GCS emulator per test module (see gcs_emulator.py); yields its environment."""
    # Imported here, not above: it imports jax, which must see XLA_FLAGS first.
    from gcs_emulator import run_emulator

    yield from run_emulator(tmp_path_factory.mktemp("gcs"))
