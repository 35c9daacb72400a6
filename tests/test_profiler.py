"""train.profile_steps: a jax.profiler trace of a few steps, where TensorBoard looks for it."""

from pathlib import Path

import pytest
from tiny_models import tiny_run_config, tiny_run_overrides, write_tiny_data

from kobart_flax import compile_cache
from kobart_flax.config import ConfigError, validate
from kobart_flax.profiling import StepTrace
from kobart_flax.train import train_and_evaluate


@pytest.fixture(autouse=True)
def cache_off_afterwards():
    yield
    compile_cache.enable(compile_cache.OFF)


@pytest.mark.slow  # a training run, over 20 s
def test_a_tiny_run_writes_the_trace_of_its_profiled_steps(tmp_path):
    write_tiny_data(tmp_path / "data", 64, 8)
    workdir = tmp_path / "run"
    overrides = tiny_run_overrides(
        str(tmp_path / "data"),
        str(workdir),
        "train.max_steps=4",
        "train.eval_every=0",
        "train.eval_max_batches=1",
        "train.checkpoint_every=0",
        "train.keep_best=0",
        "train.rouge_every=0",
        "train.profile_start=2",
        "train.profile_steps=2",
    )

    train_and_evaluate(tiny_run_config(overrides))

    profile = workdir / "tensorboard" / "plugins" / "profile"
    traces = list(profile.glob("*/*.xplane.pb"))
    assert len(traces) == 1, sorted(str(p.relative_to(workdir)) for p in profile.rglob("*"))
    assert traces[0].stat().st_size > 0
    # The compilation cache is on by default, in the run's workdir.
    assert any((workdir / "compile_cache").iterdir())


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.profile_steps=-1", "train.profile_steps=-1: must be >= 0"),
        ("train.profile_start=0", "train.profile_start=0: must be >= 1"),
    ],
)
def test_bad_profile_window_is_a_config_error(override, message):
    with pytest.raises(ConfigError, match=message):
        validate(tiny_run_config([override]), device_count=1)


def test_trace_directory_is_next_to_the_tensorboard_events(tmp_path):
    trace = StepTrace(str(tmp_path), start=3, count=2)
    assert Path(trace.log_dir) == tmp_path / "tensorboard"
    assert (trace.start, trace.last) == (3, 4)
