"""End-to-end: train_flax.py on a slice of the bundled data with a very small model."""

import logging
import re
from pathlib import Path

import jax
import numpy as np
import pytest
from tiny_models import tiny_run_config, tiny_run_overrides, write_slice, write_tiny_data

import train_flax
from kobart_flax import FlaxBartForConditionalGeneration, checkpoint, distributed
from kobart_flax.config import ConfigError
from kobart_flax.train import FINAL_MODEL_DIR, train_and_evaluate

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample"


@pytest.fixture
def small_run(tmp_path) -> list[str]:
    return tiny_run_overrides(
        str(write_tiny_data(tmp_path, 96, 20)),
        str(tmp_path / "run"),
        "train.max_steps=12",
        "train.eval_every=6",
        "train.log_every=3",
        "train.learning_rate=3e-3",
        "train.rouge_every=0",  # ROUGE has its own test below
    )


@pytest.mark.slow  # a training run, over 20 s
def test_tiny_training_run_learns_logs_and_saves(small_run):
    config = tiny_run_config(small_run)
    result = train_and_evaluate(config)

    assert len(result.train_losses) == 12
    assert all(np.isfinite(result.train_losses))
    assert np.mean(result.train_losses[-3:]) < np.mean(result.train_losses[:3]) - 0.3
    assert [step for step, _ in result.eval_losses] == [6, 12]
    assert result.eval_losses[1][1] < result.eval_losses[0][1]
    assert int(result.state.step) == 12

    workdir = Path(config.train.workdir)
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))

    # The saved model reloads through the public API and computes the same logits.
    saved = FlaxBartForConditionalGeneration.from_pretrained(workdir / FINAL_MODEL_DIR)
    input_ids = np.array([[0, 100, 200, 300, 1]])
    np.testing.assert_allclose(
        saved(input_ids).logits, result.model(input_ids).logits, rtol=1e-5, atol=1e-5
    )
    assert (workdir / FINAL_MODEL_DIR / "tokenizer.json").is_file()


@pytest.mark.slow  # two training runs
def test_same_seed_gives_identical_losses(small_run, tmp_path):
    overrides = [*small_run, "train.max_steps=2", "train.eval_every=0"]
    # Separate workdirs: a rerun in the same one would resume, not recompute.
    first = train_and_evaluate(tiny_run_config([*overrides, f"train.workdir={tmp_path / 'a'}"]))
    second = train_and_evaluate(tiny_run_config([*overrides, f"train.workdir={tmp_path / 'b'}"]))
    assert second.start_step == 0
    assert first.train_losses == second.train_losses


def test_batch_not_divisible_by_devices_fails_before_compiling(small_run):
    assert jax.device_count() == 2
    with pytest.raises(ConfigError, match="train.batch_size"):
        train_and_evaluate(tiny_run_config([*small_run, "train.batch_size=15"]))


def test_bad_training_file_is_reported_with_its_line(small_run, tmp_path, caplog):
    bad = tmp_path / "bad.tsv"
    rows = (SAMPLE / "train.tsv").read_text(encoding="utf-8").splitlines()[:5]
    rows[3] = rows[3].split("\t")[0] + "\t"  # empty summary on line 4
    bad.write_text("\n".join(rows) + "\n", encoding="utf-8")
    argv = ["--config", "configs/tiny.py", *small_run, f"data.train_path={bad}"]
    with caplog.at_level(logging.ERROR):
        assert train_flax.main(argv) == 2
    assert f"{bad}:4" in caplog.text
    assert "summary" in caplog.text


def test_too_few_examples_for_one_batch_is_an_error(small_run, tmp_path, caplog):
    write_slice(SAMPLE / "train.tsv", tmp_path / "few.tsv", 5)
    argv = ["--config", "configs/tiny.py", *small_run, f"data.train_path={tmp_path / 'few.tsv'}"]
    with caplog.at_level(logging.ERROR):
        assert train_flax.main(argv) == 2
    assert "fewer than one batch" in caplog.text


@pytest.mark.parametrize("log_every", [1, 5], ids=["seen-at-a-log-step", "seen-at-a-save"])
def test_a_non_finite_loss_stops_the_run_naming_the_last_good_checkpoint(
    small_run, tmp_path, caplog, log_every
):
    # Warmup from 0 to 1e30: step 1 leaves the params as they were, step 2 blows them up,
    # and step 3's loss is NaN. So step 1 is the last good checkpoint; step 2 is not.
    workdir = tmp_path / "diverged"
    argv = [
        "--config",
        "configs/tiny.py",
        *small_run,
        f"train.workdir={workdir}",
        "train.learning_rate=1e30",
        "train.warmup_ratio=0.5",
        "train.max_steps=8",
        "train.eval_every=0",
        "train.checkpoint_every=1",
        "train.keep_checkpoints=5",
        f"train.log_every={log_every}",
    ]
    with caplog.at_level(logging.ERROR):
        assert train_flax.main(argv) == 2
    (message,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "\n" not in message
    assert message.startswith("step 3: training loss nan"), message
    assert "last good checkpoint: step 1 in" in message, message
    assert checkpoint.all_steps(workdir / "checkpoints") == [1, 2]
    assert not (workdir / FINAL_MODEL_DIR).exists()


@pytest.mark.slow  # training runs with generation
def test_rouge_evaluation_and_early_stopping(small_run, tmp_path):
    overrides = [
        *small_run,
        f"train.workdir={tmp_path / 'rouge'}",
        "train.rouge_every=6",
        "train.rouge_examples=8",
        "train.rouge_tokenization=character",
        "decoding.num_beams=2",
        "decoding.max_length=8",
        "train.best_metric=rougeL",
        "train.best_mode=max",
        "train.eval_every=2",
    ]
    result = train_and_evaluate(tiny_run_config(overrides))
    history = {step: metrics for step, metrics in result.evaluations}
    assert set(history[6]) == {"eval_loss", "rouge1", "rouge2", "rougeL"}
    assert set(history[2]) == {"eval_loss"}  # ROUGE only at multiples of rouge_every
    assert 0.0 <= history[12]["rougeL"] <= 1.0

    # Patience 1 with "higher eval loss is better" while the loss falls: the second
    # evaluation is no improvement, so the run stops there.
    stalled = [
        *small_run,
        f"train.workdir={tmp_path / 'stalled'}",
        "train.best_mode=max",
        "train.eval_every=2",
        "train.early_stopping_patience=1",
    ]
    result = train_and_evaluate(tiny_run_config(stalled))
    assert len(result.train_losses) == 4


def test_best_metric_must_be_reported(small_run):
    with pytest.raises(ConfigError, match="rougeL"):
        train_and_evaluate(
            tiny_run_config([*small_run, "train.rouge_every=0", "train.best_metric=rougeL"])
        )


@pytest.mark.slow  # three training runs
def test_packed_training_learns_and_resumes_exactly(small_run, tmp_path, monkeypatch, caplog):
    packed = [
        *small_run,
        "data.packing=true",
        "data.packed_source_length=256",
        "data.packed_target_length=64",
        "train.batch_size=4",  # rows, each holding several examples
        "train.eval_every=0",
    ]
    with caplog.at_level(logging.INFO):
        uninterrupted = train_and_evaluate(
            tiny_run_config([*packed, f"train.workdir={tmp_path / 'whole'}"])
        )
    rows = int(re.search(r"96 examples packed into (\d+) rows", caplog.text).group(1))
    assert rows < 96 / 2  # at least two examples per row on average
    steps_per_epoch = rows // 4
    assert steps_per_epoch < 7 and 7 % steps_per_epoch  # step 7 below: mid-epoch, not the first
    assert len(uninterrupted.train_losses) == 12
    assert np.mean(uninterrupted.train_losses[-3:]) < np.mean(uninterrupted.train_losses[:3]) - 0.3

    # Stopped by a preemption notice mid-epoch, then rerun: the same losses and params.
    resumed_config = tiny_run_config([*packed, f"train.workdir={tmp_path / 'resumed'}"])
    with monkeypatch.context() as patch:
        patch.setattr(distributed.PreemptionWatcher, "reached", lambda self, step: step == 7)
        assert train_and_evaluate(resumed_config).preempted
    resumed = train_and_evaluate(resumed_config)
    assert resumed.start_step == 7
    np.testing.assert_allclose(resumed.train_losses, uninterrupted.train_losses, rtol=0, atol=1e-6)
    for a, b in zip(
        jax.tree.leaves(resumed.state.params),
        jax.tree.leaves(uninterrupted.state.params),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
