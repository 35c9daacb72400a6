"""gs:// end to end, against a real GCS emulator (fake-gcs-server) on 127.0.0.1.

A run with ``train.workdir=gs://bucket/run`` is killed with SIGKILL, resumed, and must end
with the same parameters and losses as an uninterrupted local run; then the checkpoint is
exported from the bucket and ``predict.py`` summarizes a bucket file with the bucket's final
model into a bucket file. gcsfs (under ``etils.epath``), tensorstore (under Orbax) and
google-cloud-storage (under tensorboardX) all talk to the emulator through the environment
variables that ``gcs_emulator`` sets.
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from etils import epath
from flax import serialization
from gcs_emulator import BUCKET
from timeouts import scaled_timeout
from tiny_models import signal_at_line, tiny_run_overrides, write_tiny_data

from kobart_flax import checkpoint, storage
from kobart_flax.pretrained import FlaxBartForConditionalGeneration

REPO = Path(__file__).resolve().parent.parent
TOTAL_STEPS = 12
# Checkpoints every 5 steps, written in the background; Orbax finishes one save before it
# starts the next, so once step 10's save has started, step 5 is on the bucket.
KILL_AT = "checkpoint step 10: writing"

pytestmark = pytest.mark.slow


def train_command(data: str, workdir: str) -> list[str]:
    return [
        sys.executable,
        "train_flax.py",
        "--config",
        "configs/tiny.py",
        *tiny_run_overrides(
            data,
            workdir,
            "train.num_epochs=100",
            f"train.max_steps={TOTAL_STEPS}",
            "train.learning_rate=3e-3",
            "train.eval_every=0",
            "train.checkpoint_every=5",
            "train.log_every=1",
            "train.rouge_every=0",
        ),
    ]


def run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    done = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=scaled_timeout(600)
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def test_train_kill_resume_export_and_predict_on_gs(gcs_emulator, tmp_path):
    # The five runs compile the same programs: a shared persistent cache halves the time.
    compile_cache = {
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }
    env = dict(os.environ, **gcs_emulator, **compile_cache)
    bucket_data, workdir = f"gs://{BUCKET}/data", f"gs://{BUCKET}/run"

    # The reference: the same data read locally, an uninterrupted run in a local workdir.
    local_data = write_tiny_data(tmp_path / "data", 96, 6)
    reference = tmp_path / "reference"
    run(train_command(str(local_data), str(reference)), env)

    # 1. Train on the bucket and die with SIGKILL mid-run: no chance to save or clean up.
    command = train_command(bucket_data, workdir)
    process, log = signal_at_line(command, env, KILL_AT, signal.SIGKILL, scaled_timeout(60))
    assert process.returncode == -signal.SIGKILL, log[-4000:]
    checkpoints = f"{workdir}/checkpoints"
    killed_at = checkpoint.latest_step(checkpoints)
    assert killed_at in (5, 10), log[-4000:]
    assert not epath.Path(f"{workdir}/final_model").exists()

    # 2. The same command resumes from the bucket and finishes exactly as the reference did.
    resumed = run(command, env)
    assert f"resuming from {checkpoints}/{killed_at} at step {killed_at}" in resumed.stderr
    assert f"saved the final model to {workdir}/final_model" in resumed.stderr
    assert checkpoint.latest_step(checkpoints) == TOTAL_STEPS
    expected_history = checkpoint.read_history(checkpoint.checkpoint_dir(reference))
    np.testing.assert_allclose(
        checkpoint.read_history(checkpoints)["train_losses"],
        expected_history["train_losses"],
        rtol=0,
        atol=1e-6,
    )
    final_bytes = epath.Path(f"{workdir}/final_model/flax_model.msgpack").read_bytes()
    expected_bytes = (reference / "final_model" / "flax_model.msgpack").read_bytes()
    got, expected = (serialization.msgpack_restore(b) for b in (final_bytes, expected_bytes))
    for (name, leaf), (_, expected_leaf) in zip(flatten(got), flatten(expected), strict=True):
        np.testing.assert_array_equal(leaf, expected_leaf, err_msg=name)
    assert epath.Path(f"{workdir}/checkpoints/tokenizer/tokenizer.json").exists()
    assert list(epath.Path(f"{workdir}/tensorboard").glob("events.out.tfevents.*"))
    # The model on the bucket loads through the public API, as predict.py and the demo do.
    model = FlaxBartForConditionalGeneration.from_pretrained(f"{workdir}/final_model")
    assert model.config.d_model == 32

    # 3. Export from the bucket (verified against PyTorch by export_pt.py itself).
    exported = tmp_path / "exported"
    run(
        [sys.executable, "export_pt.py", "--checkpoint", checkpoints, "--output", str(exported)],
        env,
    )
    assert (exported / "config.json").is_file()

    # 4. Summarize a bucket file with the bucket's model into the bucket; the local reference
    #    model gives the same summaries.
    predict = [sys.executable, "predict.py", "--num-beams", "2", "--max-length", "16"]
    predictions = f"{workdir}/predictions.tsv"
    run(
        [*predict, "--model", f"{workdir}/final_model", "--input", f"{bucket_data}/test.tsv"]
        + ["--output", predictions],
        env,
    )
    local_predictions = tmp_path / "predictions.tsv"
    run(
        [*predict, "--model", str(reference / "final_model"), "--input"]
        + [str(local_data / "test.tsv"), "--output", str(local_predictions)],
        env,
    )
    on_bucket = epath.Path(predictions).read_text(encoding="utf-8")
    assert on_bucket == local_predictions.read_text(encoding="utf-8")
    assert len(on_bucket.splitlines()) == 7  # header + 6 articles


def flatten(tree: dict, prefix: str = "") -> list[tuple[str, np.ndarray]]:
    items = []
    for key in sorted(tree):
        value = tree[key]
        name = f"{prefix}/{key}"
        items.extend(flatten(value, name) if isinstance(value, dict) else [(name, value)])
    return items


def test_final_model_is_published_whole_and_replaces_the_old_one(gcs_emulator):
    target = f"gs://{BUCKET}/publish/final_model"

    def write(files: dict[str, bytes]):
        def into(directory: str) -> None:
            for name, data in files.items():
                Path(directory, name).write_bytes(data)

        return into

    storage.publish_directory(target, write({"config.json": b"1", "old.bin": b"x"}))

    def failing(directory: str) -> None:
        Path(directory, "config.json").write_bytes(b"2")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        storage.publish_directory(target, failing)
    # The failed write left the previous directory whole.
    assert epath.Path(target, "config.json").read_bytes() == b"1"

    storage.publish_directory(target, write({"config.json": b"3"}))
    assert sorted(p.name for p in epath.Path(target).iterdir()) == ["config.json"]
    assert epath.Path(target, "config.json").read_bytes() == b"3"
    assert not epath.Path(f"{target}.tmp").exists()
    with storage.local_directory(target) as local:
        assert Path(local, "config.json").read_bytes() == b"3"
