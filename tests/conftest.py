"""Test-session setup shared by all test files."""

import os
import tempfile

import pytest

# Two simulated CPU devices, so the sharded code paths (batch split over a data mesh)
# run in every test. Must be set before jax is first imported.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
).strip()
# predict.py and the demo keep compiled programs in ~/.cache unless told otherwise: tests keep
# theirs in a directory of their own, so they neither fill nor read the user's cache.
os.environ["KOBART_FLAX_COMPILE_CACHE"] = tempfile.mkdtemp(prefix="kobart-flax-test-jax-cache-")


@pytest.fixture(scope="module")
def gcs_emulator(tmp_path_factory):
    """A GCS emulator per test module (see gcs_emulator.py); yields its environment."""
    # Imported here, not above: it imports jax, which must see XLA_FLAGS first.
    from gcs_emulator import run_emulator

    yield from run_emulator(tmp_path_factory.mktemp("gcs"))
