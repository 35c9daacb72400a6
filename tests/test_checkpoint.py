"""Checkpoints: exact resume, SIGTERM, kill -9, corruption, best-k / last-k, other meshes.

One uninterrupted reference run (module fixture) is what the resumed runs are compared with;
the test session has two simulated CPU devices (conftest.py), and subprocesses get the
device count or the signal a test needs.
"""

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.experimental.compilation_cache import compilation_cache
from timeouts import scaled_timeout
from tiny_models import signal_at_line, tiny_data_fixture, tiny_run_config, tiny_run_overrides

import train_flax
from kobart_flax import checkpoint, distributed, steps
from kobart_flax.config import Config, ConfigError, TrainConfig, config_to_dict
from kobart_flax.train import train_and_evaluate

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "data" / "sample"
TOTAL_STEPS = 40
PREEMPT_AT = 17  # in-process "preemption" step: mid-epoch (6 batches per epoch), no save due


@pytest.fixture(scope="module", autouse=True)
def cache_env(tmp_path_factory) -> dict[str, str]:
    """A persistent compilation cache for this module and its subprocesses.

    Every run here compiles the same few programs; on the 2-core CI machine a cached run
    takes a fifth of the time. Returns the environment variables that share the cache.
    """
    values = {
        "jax_compilation_cache_dir": str(tmp_path_factory.mktemp("jax_cache")),
        "jax_persistent_cache_min_compile_time_secs": 0.0,
        "jax_persistent_cache_min_entry_size_bytes": 0,
    }
    saved = {name: getattr(jax.config, name) for name in values}
    for name, value in values.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()  # the cache settings are read once, at the first compile
    yield {name.upper(): str(value) for name, value in values.items()}
    for name, value in saved.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()


data_dir = tiny_data_fixture(96, 20)  # 6 batches of 16


def run_overrides(data_dir: Path, workdir: Path, *extra: str) -> list[str]:
    return tiny_run_overrides(
        data_dir,
        workdir,
        "train.num_epochs=100",
        f"train.max_steps={TOTAL_STEPS}",
        "train.learning_rate=3e-3",
        "train.eval_every=10",
        "train.checkpoint_every=5",
        "train.keep_checkpoints=2",
        "train.keep_best=1",
        "train.log_every=1",
        "train.rouge_every=0",  # generation is tested elsewhere
        *extra,
    )


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
    """An uninterrupted run: (TrainResult, workdir)."""
    workdir = tmp_path_factory.mktemp("reference")
    return train_and_evaluate(tiny_run_config(run_overrides(data_dir, workdir))), workdir


def flat(tree) -> dict[str, np.ndarray]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def assert_trees_equal(actual, expected) -> None:
    actual, expected = flat(actual), flat(expected)
    assert actual.keys() == expected.keys()
    for name in expected:
        np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)


def assert_losses_match(actual: list[float], expected: list[float]) -> None:
    assert len(actual) == len(expected) == TOTAL_STEPS
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-6)


# --- saving and exact resume -------------------------------------------------------------


@pytest.mark.slow  # the reference run (module fixture)
def test_reference_run_keeps_last_k_and_best_k_with_metrics(reference):
    result, workdir = reference
    directory = checkpoint.checkpoint_dir(workdir)
    assert len(result.train_losses) == TOTAL_STEPS
    assert [step for step, _ in result.eval_losses] == [10, 20, 30, 40]
    best = min(result.eval_losses, key=lambda item: item[1])[0]
    # Saved at 5, 10, ..., 40; the newest 2 and the best evaluated one remain.
    assert checkpoint.all_steps(directory) == sorted({35, 40, best})
    assert checkpoint.best_step(directory) == best
    assert checkpoint.step_metrics(directory)[40] == {"eval_loss": result.eval_losses[-1][1]}
    assert checkpoint.step_metrics(directory)[35] is None
    # Self-describing: config, model config, tokenizer files, per-step history.
    metadata = checkpoint.read_metadata(directory)
    assert metadata["step"] == TOTAL_STEPS
    assert metadata["config"]["train"]["workdir"] == str(workdir)
    assert metadata["model_config"]["d_model"] == 32
    assert metadata["dropout_key_impl"] == "threefry2x32"
    assert (checkpoint.tokenizer_dir(directory) / "tokenizer.json").exists()
    assert len(checkpoint.load_tokenizer(directory)) == len(checkpoint.load_tokenizer(SAMPLE))
    history = checkpoint.read_history(directory)
    assert history["train_losses"] == result.train_losses
    params, _ = checkpoint.restore_params(directory)
    assert_trees_equal(params, result.state.params)


@pytest.mark.slow  # the reference run and a resumed run
def test_preempted_run_resumes_exactly(reference, data_dir, tmp_path, monkeypatch):
    expected, _ = reference
    config = tiny_run_config(run_overrides(data_dir, tmp_path))
    handler_before = signal.getsignal(signal.SIGTERM)

    # A preemption notice arriving at step PREEMPT_AT (what SIGTERM sets, without a signal).
    with monkeypatch.context() as patch:
        patch.setattr(
            distributed.PreemptionWatcher, "reached", lambda self, step: step == PREEMPT_AT
        )
        stopped = train_and_evaluate(config)
    assert stopped.preempted
    assert int(stopped.state.step) == PREEMPT_AT
    assert signal.getsignal(signal.SIGTERM) is handler_before
    directory = checkpoint.checkpoint_dir(tmp_path)
    assert checkpoint.latest_step(directory) == PREEMPT_AT
    # 17 = 2 epochs of 6 batches + 5: the next batch is batch 5 of epoch 2.
    position = checkpoint.read_json_item(directory, checkpoint.DATA_ITERATOR)
    assert (position["epoch"], position["batch_in_epoch"]) == (2, 5)
    assert not (tmp_path / "final_model").exists()

    resumed = train_and_evaluate(config)
    assert resumed.start_step == PREEMPT_AT
    assert not resumed.preempted
    assert_losses_match(resumed.train_losses, expected.train_losses)
    assert [step for step, _ in resumed.eval_losses] == [step for step, _ in expected.eval_losses]
    np.testing.assert_allclose(
        [loss for _, loss in resumed.eval_losses],
        [loss for _, loss in expected.eval_losses],
        rtol=0,
        atol=1e-6,
    )
    assert_trees_equal(resumed.state.params, expected.state.params)
    assert_trees_equal(resumed.state.opt_state, expected.state.opt_state)


@pytest.mark.slow  # a train_flax.py subprocess, SIGTERM, rerun
def test_sigterm_saves_exits_cleanly_and_resumes(reference, data_dir, tmp_path, cache_env):
    expected, _ = reference
    env = dict(os.environ, **cache_env)
    command = [
        sys.executable,
        "train_flax.py",
        "--config",
        "configs/tiny.py",
        *run_overrides(data_dir, tmp_path),
    ]
    process, log = signal_at_line(
        command, env, f"step 2/{TOTAL_STEPS}", signal.SIGTERM, scaled_timeout(300)
    )
    assert process.returncode == train_flax.EXIT_PREEMPTED, log  # not finished: rerun
    assert "stopped at step" in log, log
    directory = checkpoint.checkpoint_dir(tmp_path)
    stopped_at = checkpoint.latest_step(directory)
    assert 2 <= stopped_at < TOTAL_STEPS, log
    assert f"stopped at step {stopped_at} after a preemption notice" in log
    assert not (tmp_path / "final_model").exists()
    assert not (tmp_path / checkpoint.LOCK_FILE).exists()  # released: the rerun may start

    rerun = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=scaled_timeout(300)
    )
    assert rerun.returncode == 0, rerun.stderr
    assert f"resuming from {directory / str(stopped_at)} at step {stopped_at}" in rerun.stderr
    history = checkpoint.read_history(directory)
    assert checkpoint.latest_step(directory) == TOTAL_STEPS
    assert_losses_match(history["train_losses"], expected.train_losses)
    params, _ = checkpoint.restore_params(directory)
    assert_trees_equal(params, expected.state.params)
    assert (tmp_path / "final_model" / "flax_model.msgpack").exists()


# --- damaged checkpoints -----------------------------------------------------------------


def largest_file(directory: Path) -> Path:
    return max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


@pytest.mark.slow  # the reference run and a resumed run
def test_truncated_checkpoint_is_named_and_resume_falls_back(reference, data_dir, tmp_path, caplog):
    expected, reference_workdir = reference
    shutil.copytree(reference_workdir, tmp_path, dirs_exist_ok=True)
    directory = Path(checkpoint.checkpoint_dir(tmp_path))
    data_file = largest_file(directory / str(TOTAL_STEPS) / checkpoint.PARAMS)
    with open(data_file, "r+b") as file:
        file.truncate(data_file.stat().st_size // 2)

    error_text = f"checkpoint {directory / '40'} is unreadable: item 'params'"
    with pytest.raises(checkpoint.CheckpointError, match=re.escape(error_text)):
        checkpoint.restore_params(directory)
    _, metadata = checkpoint.restore_params(directory, step=35)  # the previous one is fine
    assert metadata["step"] == 35

    config = tiny_run_config(run_overrides(data_dir, tmp_path))
    with caplog.at_level(logging.WARNING):
        resumed = train_and_evaluate(config)
    assert error_text in caplog.text
    assert "falling back to the previous checkpoint" in caplog.text
    assert resumed.start_step == 35
    assert_losses_match(resumed.train_losses, expected.train_losses)
    assert_trees_equal(resumed.state.params, expected.state.params)
    # The damaged step is kept aside for inspection, and step 40 is written anew.
    moved = [path.name for path in (directory / checkpoint.CORRUPTED_DIR).iterdir()]
    assert [name.split("-")[0] for name in moved] == ["40"]
    assert checkpoint.latest_step(directory) == TOTAL_STEPS


@pytest.mark.parametrize(
    "damage, message",
    [
        ("missing params", "is incomplete: item 'params' is missing"),
        ("truncated metrics", "is unreadable: item 'metrics'"),
    ],
)
@pytest.mark.slow  # the reference run (module fixture)
def test_damaged_step_is_named_and_moved_aside(reference, tmp_path, caplog, damage, message):
    _, reference_workdir = reference
    directory = tmp_path / "checkpoints"
    shutil.copytree(checkpoint.checkpoint_dir(reference_workdir), directory)
    if damage == "missing params":
        shutil.rmtree(directory / "40" / checkpoint.PARAMS)
    else:
        metrics_file = directory / "40" / "metrics" / "metrics"
        metrics_file.write_text(metrics_file.read_text()[:5])

    expected = f"checkpoint {directory / '40'} {message}"
    with pytest.raises(checkpoint.CheckpointError, match=re.escape(expected)):
        checkpoint.restore_params(directory, step=40)

    with caplog.at_level(logging.WARNING):
        checkpoint.TrainCheckpointer(directory, TrainConfig()).close()
    assert expected in caplog.text
    assert checkpoint.latest_step(directory) == 35
    moved = [path.name for path in (directory / checkpoint.CORRUPTED_DIR).iterdir()]
    assert [name.split("-")[0] for name in moved] == ["40"]


def test_checkpoint_errors_name_what_is_missing(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="no such checkpoint directory"):
        checkpoint.restore_params(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(checkpoint.CheckpointError, match="no complete checkpoint"):
        checkpoint.restore_params(tmp_path / "empty")


KILLED_SAVE = textwrap.dedent(
    """
    import os, signal, sys
    import jax, jax.numpy as jnp, optax
    from kobart_flax import checkpoint, steps
    from kobart_flax.config import TrainConfig

    def state(step):
        # 32 MB of random float32: writing it takes long enough to be killed half-way.
        params = {"w": jax.random.normal(jax.random.key(step), (4096, 2048))}
        state = steps.create_train_state(params, optax.sgd(0.1), jax.random.key(0))
        return state.replace(step=jnp.int32(step))

    saver = checkpoint.TrainCheckpointer(sys.argv[1], TrainConfig(keep_checkpoints=5))
    kwargs = dict(data_iterator={}, history={}, metadata={"model_config": {}})
    saver.save(1, state(1), **kwargs)
    saver.wait_until_finished()
    saver.save(2, state(2), **kwargs)  # returns once the arrays are on the host
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def fake_abstract_state(step: int) -> steps.TrainState:
    def make():
        params = {"w": jax.random.normal(jax.random.key(step), (4096, 2048))}
        state = steps.create_train_state(params, optax.sgd(0.1), jax.random.key(0))
        return state.replace(step=jnp.int32(step))

    replicated = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=replicated),
        jax.eval_shape(make),
    )


@pytest.mark.slow  # a kill -9 subprocess
def test_kill_9_during_an_async_save_leaves_the_previous_checkpoint(tmp_path):
    directory = tmp_path / "checkpoints"
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_SAVE, str(directory)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=scaled_timeout(120),
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    partial = [path.name for path in directory.iterdir() if path.name.startswith("2.")]
    assert partial and "orbax-checkpoint-tmp" in partial[0]  # killed mid-write
    assert checkpoint.all_steps(directory) == [1]

    with checkpoint.TrainCheckpointer(directory, TrainConfig(keep_checkpoints=5)) as saver:
        restored = saver.restore(1, lambda metadata: fake_abstract_state(1))
        expected = jax.random.normal(jax.random.key(1), (4096, 2048))
        np.testing.assert_array_equal(restored.state.params["w"], expected)
        assert int(restored.state.step) == 1
    # The partial step is gone, so a new step 2 can be written.
    assert sorted(path.name for path in directory.iterdir()) == ["1"]


# --- retention ---------------------------------------------------------------------------


def tiny_state(step: int) -> steps.TrainState:
    state = steps.create_train_state(
        {"w": jnp.full(3, float(step))}, optax.adam(1e-3), jax.random.key(0)
    )
    return state.replace(step=jnp.int32(step))


def save_steps(directory: Path, train_config: TrainConfig, metrics: dict[int, float | None]):
    metadata = {"config": config_to_dict(Config(train=train_config)), "model_config": {}}
    with checkpoint.TrainCheckpointer(directory, train_config) as saver:
        for step, value in metrics.items():
            saver.save(
                step,
                tiny_state(step),
                data_iterator={},
                history={},
                metadata=metadata,
                metrics=None if value is None else {train_config.best_metric: value},
            )


def test_keeps_the_newest_k_and_the_best_k_across_restarts(tmp_path):
    train_config = TrainConfig(keep_checkpoints=2, keep_best=2, best_metric="eval_loss")
    save_steps(tmp_path, train_config, {1: 5.0, 2: 1.0, 3: 4.0, 4: None, 5: 3.0, 6: None})
    # Newest 2: 5, 6. Best 2 by eval_loss (min): 2 (1.0), 5 (3.0).
    assert checkpoint.all_steps(tmp_path) == [2, 5, 6]
    assert checkpoint.best_step(tmp_path) == 2

    # A restarted run remembers the metrics of the steps already on disk.
    save_steps(tmp_path, train_config, {7: 0.5, 8: None})
    assert checkpoint.all_steps(tmp_path) == [2, 7, 8]
    assert checkpoint.best_step(tmp_path) == 7


def test_best_mode_max_for_rouge_like_metrics(tmp_path):
    train_config = TrainConfig(
        keep_checkpoints=1, keep_best=1, best_metric="rougeL", best_mode="max"
    )
    save_steps(tmp_path, train_config, {1: 0.2, 2: 0.5, 3: 0.4})
    assert checkpoint.all_steps(tmp_path) == [2, 3]
    assert checkpoint.best_step(tmp_path) == 2


def test_keep_best_zero_keeps_only_the_newest(tmp_path):
    train_config = TrainConfig(keep_checkpoints=2, keep_best=0)
    save_steps(tmp_path, train_config, {1: 0.1, 2: 5.0, 3: 6.0})
    assert checkpoint.all_steps(tmp_path) == [2, 3]


# --- restoring elsewhere -----------------------------------------------------------------


RESTORE_ELSEWHERE = textwrap.dedent(
    """
    import sys
    import jax
    import numpy as np
    from jax.sharding import AxisType, NamedSharding, PartitionSpec
    from kobart_flax import checkpoint

    directory, expected_file, devices = sys.argv[1], sys.argv[2], int(sys.argv[3])
    assert jax.device_count() == devices, jax.devices()
    expected = np.load(expected_file)

    def check(params, shardings=None):
        leaves = jax.tree_util.tree_flatten_with_path(params)[0]
        assert len(leaves) == len(expected.files)
        for path, leaf in leaves:
            np.testing.assert_array_equal(np.asarray(leaf), expected[jax.tree_util.keystr(path)])

    # Default: everything on one CPU device (what export needs).
    params, metadata = checkpoint.restore_params(directory)
    check(params)
    cpu0 = {jax.devices("cpu")[0]}
    assert all(leaf.sharding.device_set == cpu0 for leaf in jax.tree.leaves(params))

    # All devices: the first axis split over them where it divides, else replicated.
    mesh = jax.make_mesh((devices,), ("data",), (AxisType.Auto,))
    def spec(leaf):
        splits = leaf.shape and leaf.shape[0] % devices == 0
        return PartitionSpec("data") if splits else PartitionSpec()
    abstract = checkpoint.abstract_params(metadata["model_config"])
    shardings = jax.tree.map(lambda leaf: NamedSharding(mesh, spec(leaf)), abstract)
    params, _ = checkpoint.restore_params(directory, sharding=shardings)
    check(params)
    leaves = jax.tree.leaves(params)
    split = [leaf for leaf in leaves if leaf.sharding.spec == PartitionSpec("data")]
    assert split and all(len(leaf.sharding.device_set) == devices for leaf in split)
    print("restored", len(jax.tree.leaves(params)), "arrays onto", devices, "devices")
    """
)


@pytest.mark.slow  # subprocesses with 1 and 8 devices
def test_restore_onto_one_device_and_onto_eight(reference, tmp_path):
    result, workdir = reference
    expected_file = tmp_path / "expected.npz"
    np.savez(expected_file, **flat(result.state.params))
    processes = {}
    for devices in (1, 8):
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
        processes[devices] = subprocess.Popen(
            [
                sys.executable,
                "-c",
                RESTORE_ELSEWHERE,
                str(checkpoint.checkpoint_dir(workdir)),
                str(expected_file),
                str(devices),
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    for devices, process in processes.items():
        out, err = process.communicate(timeout=scaled_timeout(300))
        assert process.returncode == 0, err
        assert f"onto {devices} devices" in out


@pytest.mark.slow  # the reference run (module fixture)
def test_restore_params_from_a_step_directory_and_the_best_step(reference):
    result, workdir = reference
    directory = checkpoint.checkpoint_dir(workdir)
    best = checkpoint.best_step(directory)
    by_best, metadata = checkpoint.restore_params(directory, best=True)
    by_dir, _ = checkpoint.restore_params(directory / str(best))
    assert metadata["step"] == best
    assert_trees_equal(by_best, by_dir)
    mesh = jax.make_mesh((2,), ("data",), (jax.sharding.AxisType.Auto,))
    on_mesh, _ = checkpoint.restore_params(directory, sharding=mesh)
    assert_trees_equal(on_mesh, result.state.params)
    assert all(len(leaf.sharding.device_set) == 2 for leaf in jax.tree.leaves(on_mesh))


# --- resume order ------------------------------------------------------------------------


@pytest.mark.slow  # the reference run and a second run
def test_init_checkpoint_starts_from_another_runs_params(reference, data_dir, tmp_path, caplog):
    expected, reference_workdir = reference
    source = checkpoint.checkpoint_dir(reference_workdir) / "35"  # a step directory works too
    config = tiny_run_config(run_overrides(data_dir, tmp_path, f"train.init_checkpoint={source}"))
    with caplog.at_level(logging.INFO):
        result = train_and_evaluate(config)
    assert f"initialized the params from {source} (step 35)" in caplog.text
    assert result.start_step == 0
    assert len(result.train_losses) == TOTAL_STEPS
    # Trained params: far below the first loss of the random init it would otherwise use.
    assert result.train_losses[0] < expected.train_losses[0] - 1.0

    # Its own checkpoint now comes first: rerunning resumes instead of re-initializing.
    caplog.clear()
    with caplog.at_level(logging.INFO):
        again = train_and_evaluate(config)
    assert "initialized the params" not in caplog.text
    assert "training already finished" in caplog.text
    assert again.start_step == TOTAL_STEPS
    assert again.train_losses == result.train_losses
    assert_trees_equal(again.state.params, result.state.params)


def test_best_metric_must_be_one_the_evaluation_reports(data_dir, tmp_path):
    config = tiny_run_config(run_overrides(data_dir, tmp_path, "train.best_metric=rougeL"))
    with pytest.raises(ConfigError, match="train.best_metric='rougeL': evaluation reports only"):
        train_and_evaluate(config)
    assert not (tmp_path / "checkpoints").exists()  # stopped before touching anything
