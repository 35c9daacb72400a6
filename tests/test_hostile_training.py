"""Training as a careless or hostile user runs it (issue 14): a second run on a workdir in
use, checkpoints that are all unreadable or unreachable, a disk that fills during a save, a
tokenizer without special tokens, lengths past the model's positions. Each ends in one line
(rc 2) or is handled, and nothing in the workdir is lost."""

import errno
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from gcs_emulator import BUCKET
from timeouts import scaled_timeout
from tiny_models import (
    SAMPLE_TOKENIZER,
    tiny_data_fixture,
    tiny_kobart_config,
    tiny_run_config,
    tiny_run_overrides,
)

import train_flax
from kobart_flax import FlaxBartForConditionalGeneration, checkpoint
from kobart_flax.config import ConfigError, TrainConfig
from kobart_flax.tokenization import load_tokenizer
from kobart_flax.train import FINAL_MODEL_DIR, train_and_evaluate

REPO = Path(__file__).resolve().parent.parent


data_dir = tiny_data_fixture(32, 4)  # 2 batches of 16


def overrides(data_dir: Path, workdir: Path, *extra: str) -> list[str]:
    return tiny_run_overrides(
        data_dir,
        workdir,
        "train.max_steps=2",
        "train.eval_every=0",
        "train.checkpoint_every=1",
        "train.keep_checkpoints=2",
        "train.log_every=1",
        "train.rouge_every=0",
        *extra,
    )


def run_main(argv: list[str], caplog) -> tuple[int, list[str]]:
    """train_flax.main's exit status and its ERROR lines."""
    caplog.clear()
    with caplog.at_level(logging.INFO):
        status = train_flax.main(["--config", "configs/tiny.py", *argv])
    return status, [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def tree(directory: Path) -> dict[str, int]:
    return {str(p.relative_to(directory)): p.stat().st_mtime_ns for p in directory.rglob("*")}


# --- one run per workdir -----------------------------------------------------------------

HOLD_LOCK = textwrap.dedent(
    """
    import sys, time
    from kobart_flax import checkpoint
    checkpoint.WorkdirLock(sys.argv[1]).__enter__()
    print("locked", flush=True)
    time.sleep(600)
    """
)


@pytest.fixture
def lock_holder(tmp_path):
    """A live process holding the lock of ``tmp_path / 'run'``: (process, workdir)."""
    workdir = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(workdir)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    yield holder, workdir
    holder.kill()
    holder.wait()


def test_second_run_on_a_workdir_in_use_stops_touching_nothing(data_dir, lock_holder, caplog):
    holder, workdir = lock_holder
    # The first run's save in flight: the second run's start-up used to delete it.
    in_flight = workdir / "checkpoints" / "7.orbax-checkpoint-tmp-1234"
    in_flight.mkdir(parents=True)
    before = tree(workdir)

    status, errors = run_main(overrides(data_dir, workdir, "train.learning_rate=1e-2"), caplog)

    assert status == 2
    (message,) = errors
    assert "\n" not in message
    assert f"pid {holder.pid} on {os.uname().nodename}" in message, message
    assert str(workdir / checkpoint.LOCK_FILE) in message
    assert tree(workdir) == before


def test_a_killed_runs_lock_is_taken_over_and_released_on_exit(lock_holder, caplog):
    holder, workdir = lock_holder
    holder.kill()
    holder.wait()
    lock_file = workdir / checkpoint.LOCK_FILE
    with caplog.at_level(logging.WARNING), checkpoint.WorkdirLock(workdir):
        assert json.loads(lock_file.read_text())["pid"] == os.getpid()
    assert f"taking over the lock of pid {holder.pid}" in caplog.text
    assert not lock_file.exists()

    # Released after an exception too.
    with pytest.raises(KeyError), checkpoint.WorkdirLock(workdir):
        raise KeyError("boom")
    assert not lock_file.exists()


def test_a_lock_from_another_host_says_how_to_remove_it(tmp_path):
    lock_file = tmp_path / checkpoint.LOCK_FILE
    lock_file.write_text(json.dumps({"host": "tpu-worker-0", "pid": 1, "started": "yesterday"}))
    with pytest.raises(checkpoint.WorkdirLockedError) as raised:
        checkpoint.WorkdirLock(tmp_path).__enter__()
    assert "pid 1 on tpu-worker-0" in str(raised.value)
    assert f"if that run is gone, delete {lock_file}" in str(raised.value)
    assert lock_file.exists()


@pytest.mark.slow  # a GCS emulator process
def test_the_lock_on_gs_is_created_once(gcs_emulator):  # noqa: F811
    workdir = f"gs://{BUCKET}/locked-run"
    with checkpoint.WorkdirLock(workdir) as held:
        assert json.loads(held.path.read_text())["pid"] == os.getpid()
        # Created only where no object exists: a second create fails, whoever checks first.
        assert not checkpoint.WorkdirLock(workdir)._create("{}")
        with pytest.raises(checkpoint.WorkdirLockedError, match="in use by pid"):
            checkpoint.WorkdirLock(workdir).__enter__()
    assert not held.path.exists()


# --- checkpoints that cannot be resumed from ---------------------------------------------


@pytest.fixture(scope="module")
def two_step_run(data_dir, tmp_path_factory) -> Path:
    """A finished 2-step run with a checkpoint at steps 1 and 2: its workdir."""
    workdir = tmp_path_factory.mktemp("two_steps")
    config = tiny_run_config(overrides(data_dir, workdir))
    train_and_evaluate(config)
    assert checkpoint.all_steps(checkpoint.checkpoint_dir(workdir)) == [1, 2]
    return workdir


def damaged_copy(two_step_run: Path, target: Path) -> Path:
    shutil.copytree(two_step_run, target)
    for step in (1, 2):
        params = target / "checkpoints" / str(step) / checkpoint.PARAMS
        largest = max((p for p in params.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
        largest.write_bytes(largest.read_bytes()[:100])
    shutil.rmtree(target / FINAL_MODEL_DIR)
    return target


@pytest.mark.slow  # two_step_run and a rerun
def test_no_readable_checkpoint_stops_unless_told_to_start_over(
    data_dir, two_step_run, tmp_path, caplog
):
    workdir = damaged_copy(two_step_run, tmp_path / "run")
    directory = workdir / "checkpoints"
    argv = overrides(data_dir, workdir, "train.max_steps=3")

    status, errors = run_main(argv, caplog)
    assert status == 2
    (message,) = errors
    assert "\n" not in message
    assert f"no readable checkpoint in {directory}: step(s) 2, 1 are damaged" in message
    assert "train.restart_if_unreadable=true" in message
    assert checkpoint.all_steps(directory) == [1, 2]  # nothing moved aside
    assert not (directory / checkpoint.CORRUPTED_DIR).exists()
    assert not (workdir / FINAL_MODEL_DIR).exists()

    status, _ = run_main([*argv, "train.restart_if_unreadable=true"], caplog)
    assert status == 0
    assert "starting over from step 0" in caplog.text
    moved = sorted(p.name.split("-")[0] for p in (directory / checkpoint.CORRUPTED_DIR).iterdir())
    assert moved == ["1", "2"]
    assert checkpoint.all_steps(directory) == [2, 3]


@pytest.mark.slow  # two_step_run, a training run
def test_all_steps_incomplete_stops_before_orbax_opens_them(two_step_run, tmp_path):
    directory = tmp_path / "checkpoints"
    shutil.copytree(two_step_run / "checkpoints", directory)
    for step in (1, 2):
        shutil.rmtree(directory / str(step) / checkpoint.HISTORY)
    with pytest.raises(checkpoint.ResumeError, match="restart_if_unreadable"):
        checkpoint.TrainCheckpointer(directory, TrainConfig())
    assert checkpoint.all_steps(directory) == [1, 2]


@pytest.mark.slow  # two_step_run, a training run
def test_a_read_failure_is_not_damage(data_dir, two_step_run, tmp_path, caplog, monkeypatch):
    workdir = tmp_path / "run"
    shutil.copytree(two_step_run, workdir)
    shutil.rmtree(workdir / FINAL_MODEL_DIR)

    def unreachable(self, step, *args, **kwargs):
        raise OSError(errno.EIO, "Input/output error", str(workdir / "checkpoints" / str(step)))

    monkeypatch.setattr(checkpoint.ocp.CheckpointManager, "restore", unreachable)
    status, errors = run_main(overrides(data_dir, workdir, "train.max_steps=3"), caplog)
    assert status == 2
    (message,) = errors
    assert "Input/output error" in message and "nothing was moved aside" in message
    assert checkpoint.all_steps(workdir / "checkpoints") == [1, 2]
    assert not (workdir / "checkpoints" / checkpoint.CORRUPTED_DIR).exists()


# --- a disk that fills during an async save ----------------------------------------------

FULL_DISK = textwrap.dedent(
    """
    import resource, signal, sys
    # Writes past the limit fail with EFBIG, as a full disk fails them with ENOSPC: inside
    # tensorstore, in Orbax's background threads. The signal would kill the process instead.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), resource.RLIM_INFINITY))
    import train_flax
    sys.exit(train_flax.main(sys.argv[2:]))
    """
)


@pytest.mark.slow  # a train_flax.py subprocess
def test_a_failed_background_save_stops_training_with_one_message(data_dir, tmp_path):
    workdir = tmp_path / "run"
    argv = overrides(data_dir, workdir, "train.max_steps=12", "train.checkpoint_every=3")
    # The tokenizer (160 kB) and the token cache fit; a checkpoint's params (350 kB) do not.
    limit = 300_000
    result = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(limit), "--config", "configs/tiny.py", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=scaled_timeout(300),
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    errors = [line for line in output.splitlines() if " ERROR " in line]
    assert len(errors) == 1, output[-3000:]
    assert f"checkpoint step 3 could not be written to {workdir / 'checkpoints'}" in errors[0]
    assert "File too large" in errors[0]
    # Stopped at the first step after the failure, not at the next save.
    assert "step 5/12" not in output
    assert not (workdir / FINAL_MODEL_DIR).exists()
    assert checkpoint.all_steps(workdir / "checkpoints") == []


# --- tokenizers without special tokens ---------------------------------------------------


@pytest.fixture
def bare_tokenizer(tmp_path) -> Path:
    """The sample tokenizer as some KoBART mirrors ship it: no special tokens named."""
    directory = tmp_path / "bare_tokenizer"
    shutil.copytree(SAMPLE_TOKENIZER, directory)
    (directory / "special_tokens_map.json").write_text("{}")
    config_file = directory / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    for role in ("bos", "eos", "pad", "unk", "mask"):
        config.pop(f"{role}_token", None)
    config_file.write_text(json.dumps(config))
    return directory


def test_a_tokenizer_without_special_tokens_gets_kobarts_with_a_warning(bare_tokenizer, caplog):
    with caplog.at_level(logging.WARNING):
        tokenizer = load_tokenizer(str(bare_tokenizer))
    ids = (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    assert ids == (0, 1, 3)
    assert "bos <s> (id 0), eos </s> (id 1), pad <pad> (id 3)" in caplog.text

    named = load_tokenizer(str(bare_tokenizer), "pad=<usr>, unk=<unk>")
    assert (named.pad_token_id, named.eos_token_id) == (2, 1)
    with pytest.raises(ConfigError, match="model.special_tokens: eos=<eos> is not in the voc"):
        load_tokenizer(str(bare_tokenizer), "eos=<eos>")


def test_a_vocabulary_without_kobarts_tokens_names_the_missing_one(tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocabulary = {"<s>": 0, "</s>": 1, "a": 2, "b": 3}
    wrapped = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocabulary)))
    wrapped.save_pretrained(tmp_path / "tok")
    with pytest.raises(ConfigError, match="has no pad token and no <pad> in its vocabulary"):
        load_tokenizer(str(tmp_path / "tok"))
    assert load_tokenizer(str(tmp_path / "tok"), "pad=a").pad_token_id == 2


def test_training_with_a_bare_tokenizer(data_dir, bare_tokenizer, tmp_path, caplog):
    workdir = tmp_path / "run"
    status, errors = run_main(
        overrides(data_dir, workdir, f"model.tokenizer={bare_tokenizer}", "train.max_steps=1"),
        caplog,
    )
    assert (status, errors) == (0, [])
    saved = load_tokenizer(str(workdir / FINAL_MODEL_DIR))
    assert (saved.bos_token_id, saved.eos_token_id, saved.pad_token_id) == (0, 1, 3)


def test_special_tokens_are_validated_with_the_config():
    config = tiny_run_config(["model.special_tokens=bos:<s>"])
    with pytest.raises(ConfigError, match="model.special_tokens='bos:<s>'"):
        train_and_evaluate(config)


# --- lengths past the model's positions --------------------------------------------------


def test_lengths_past_a_pretrained_models_positions_fail_before_compiling(
    data_dir, tmp_path, caplog
):
    tokenizer = load_tokenizer(str(SAMPLE_TOKENIZER))
    config = tiny_kobart_config(len(tokenizer))
    config.max_position_embeddings = 66  # 64 usable positions
    model_dir = tmp_path / "short_model"
    FlaxBartForConditionalGeneration(config, seed=3).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    workdir = tmp_path / "run"

    status, errors = run_main(overrides(data_dir, workdir, f"model.pretrained={model_dir}"), caplog)
    assert status == 2
    # Validation reads the model's own config.json, so the run stops before loading weights.
    positions = f"(max_position_embeddings=66 in {model_dir}/config.json minus offset 2)"
    assert errors == [
        "invalid config:\n"
        f"  data.max_source_length=128: exceeds the 64 usable positions {positions}\n"
        f"  data.source_buckets=(64, 128): largest bucket 128 exceeds the 64 positions {positions}"
    ]
    assert not (workdir / "checkpoints").exists()
