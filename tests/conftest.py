"""Test-session setup shared by all test files."""

import os

# Two simulated CPU devices, so the sharded code paths (batch split over a data mesh)
# run in every test. Must be set before jax is first imported.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
).strip()
