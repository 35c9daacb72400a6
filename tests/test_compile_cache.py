"""The persistent compilation cache: where each command keeps it, and that a second compile of
a program loads it from there."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from etils import epath
from gcs_emulator import BUCKET

from kobart_flax import compile_cache

HITS = "/jax/compilation_cache/cache_hits"


@pytest.fixture
def cache_hits():
    """A list that gets one entry per compile served from the persistent cache."""
    hits = []

    def listen(event, **kwargs):
        if event == HITS:
            hits.append(event)

    jax.monitoring.register_event_listener(listen)
    yield hits
    jax.monitoring.unregister_event_listener(listen)


@pytest.fixture(autouse=True)
def cache_off_afterwards():
    yield
    compile_cache.enable(compile_cache.OFF)


def compile_and_run(scale: float) -> None:
    """A program of its own (``scale`` is baked in), compiled afresh."""
    jax.clear_caches()
    jax.jit(lambda x: jnp.sin(x) * scale)(np.arange(4, dtype=np.float32)).block_until_ready()


def test_a_second_compile_loads_the_first_from_the_directory(tmp_path, cache_hits):
    compile_cache.enable(str(tmp_path / "cache"))

    compile_and_run(1.25)
    entries = sorted(path.name for path in (tmp_path / "cache").iterdir())
    assert entries, "the first compile is written, small and fast as it is"
    assert not cache_hits
    compile_and_run(1.25)

    assert len(cache_hits) == 1
    assert sorted(path.name for path in (tmp_path / "cache").iterdir()) == entries


def test_a_new_directory_takes_over_and_none_turns_it_off(tmp_path, cache_hits):
    compile_cache.enable(str(tmp_path / "first"))
    compile_and_run(2.5)
    compile_cache.enable(str(tmp_path / "second"))
    compile_and_run(2.5)
    assert not cache_hits, "the second directory does not hold the program"
    assert any((tmp_path / "second").iterdir())

    compile_cache.enable(compile_cache.OFF)
    compile_and_run(3.75)
    compile_and_run(3.75)

    assert not cache_hits
    assert jax.config.jax_compilation_cache_dir is None


def test_training_caches_under_its_workdir_unless_told_otherwise():
    assert compile_cache.training_directory("gs://b/run", "") == "gs://b/run/compile_cache"
    assert compile_cache.training_directory("runs/x", "/shared/jax") == "/shared/jax"
    assert compile_cache.training_directory("runs/x", "none") == "none"


def test_predict_and_the_demo_cache_per_user_unless_the_environment_says():
    assert compile_cache.user_directory({"HOME": "/h"}).endswith("/.cache/kobart_flax/jax")
    assert compile_cache.user_directory({"XDG_CACHE_HOME": "/xdg"}) == "/xdg/kobart_flax/jax"
    given = {"KOBART_FLAX_COMPILE_CACHE": "gs://b/jax", "XDG_CACHE_HOME": "/xdg"}
    assert compile_cache.user_directory(given) == "gs://b/jax"


@pytest.mark.slow  # a GCS emulator process
def test_a_gs_directory_serves_a_pod_from_the_bucket(gcs_emulator, cache_hits):
    directory = f"gs://{BUCKET}/run/compile_cache"
    compile_cache.enable(directory)

    compile_and_run(4.5)
    assert list(epath.Path(directory).iterdir()), "written to the bucket"
    compile_and_run(4.5)

    assert len(cache_hits) == 1
