import logging
import struct
from pathlib import Path

import pytest
from tensorboardX.proto.event_pb2 import Event

from kobart_flax.metrics_logger import MetricsLogger, format_duration

LOGGER_NAME = "kobart_flax.metrics_logger"


class FakeClock:
    """Stands in for time.monotonic so ETA and tokens/s are exact."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def read_events(logdir: Path) -> list[Event]:
    """Parses TFRecord event files without TensorFlow or tensorboard.

    Each record: uint64 length, uint32 length CRC, payload, uint32 payload CRC.
    """
    events = []
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            payload = data[offset + 12 : offset + 12 + length]
            events.append(Event.FromString(payload))
            offset += 12 + length + 4
    return events


def scalars(events: list[Event]) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} for every scalar summary."""
    found: dict[str, dict[int, float]] = {}
    for event in events:
        for value in event.summary.value:
            if value.HasField("simple_value"):
                found.setdefault(value.tag, {})[event.step] = value.simple_value
    return found


def texts(events: list[Event]) -> dict[str, str]:
    found = {}
    for event in events:
        for value in event.summary.value:
            if value.metadata.plugin_data.plugin_name == "text":
                found[value.tag] = value.tensor.string_val[0].decode()
    return found


def test_enabled_logger_writes_readable_scalars(tmp_path):
    clock = FakeClock()
    with MetricsLogger(str(tmp_path), enabled=True, total_steps=100, clock=clock) as metrics:
        metrics.log_hparams({"train": {"batch_size": 32, "workdir": "runs/tiny"}})
        metrics.log_train(10, {"loss": 4.5, "lr": 1e-4, "tokens": 999})
        clock.now += 10.0
        metrics.log_train(20, {"loss": 3.25, "lr": 2e-4, "tokens": 5000})
        metrics.log_eval(20, {"loss": 2.5, "rouge1": 0.125})

    events = read_events(tmp_path / "tensorboard")
    logged = scalars(events)
    assert logged["train/loss"] == {10: 4.5, 20: 3.25}
    assert logged["train/lr"] == pytest.approx({10: 1e-4, 20: 2e-4})
    # No rate on the first call (nothing to measure from), then 5000 tokens / 10 s.
    assert logged["train/tokens_per_sec"] == {20: 500.0}
    assert "train/tokens" not in logged
    assert logged["eval/loss"] == {20: 2.5}
    assert logged["eval/rouge1"] == {20: 0.125}
    config_text = texts(events)["config/text_summary"]
    assert '"batch_size": 32' in config_text
    assert '"workdir": "runs/tiny"' in config_text


def test_disabled_logger_creates_no_files_and_logs_nothing(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    workdir = tmp_path / "run"
    with MetricsLogger(str(workdir), enabled=False, total_steps=100) as metrics:
        metrics.log_hparams({"train": {}})
        metrics.log_train(1, {"loss": 1.0, "tokens": 10})
        metrics.log_eval(1, {"loss": 1.0})
        metrics.flush()
    assert not workdir.exists()
    assert list(tmp_path.iterdir()) == []
    assert caplog.records == []


def test_train_console_line(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    clock = FakeClock()
    with MetricsLogger(str(tmp_path), enabled=True, total_steps=900, clock=clock) as metrics:
        metrics.log_train(100, {"loss": 3.9, "lr": 8e-4, "tokens": 1000})
        clock.now += 10.0  # 20 steps in 10 s
        metrics.log_train(120, {"loss": 3.4123, "lr": 9.1e-4, "tokens": 53_120})

    first, second = (record.getMessage() for record in caplog.records)
    # The first call has no interval to measure a rate or an ETA from.
    assert first == "step 100/900 | loss 3.9 | lr 8.0e-04"
    # 780 steps left at 0.5 s per step = 390 s.
    assert second == "step 120/900 | loss 3.412 | lr 9.1e-04 | 5,312 tok/s | eta 6m30s"


def test_eta_averages_over_all_steps_since_the_first_log(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    clock = FakeClock()
    with MetricsLogger(str(tmp_path), enabled=True, total_steps=1000, clock=clock) as metrics:
        metrics.log_train(0, {"loss": 5.0})
        clock.now += 10.0
        metrics.log_train(10, {"loss": 4.0})
        clock.now += 30.0
        metrics.log_train(20, {"loss": 3.0})
    # 40 s over 20 steps = 2 s per step; 980 steps left.
    assert caplog.records[-1].getMessage() == "step 20/1000 | loss 3 | eta 32m40s"


def test_eval_time_is_left_out_of_tokens_per_second(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    clock = FakeClock()
    with MetricsLogger(str(tmp_path), enabled=True, total_steps=40, clock=clock) as metrics:
        metrics.log_train(10, {"tokens": 100})
        clock.now += 60.0  # evaluation takes a minute
        metrics.log_eval(10, {"loss": 2.91})
        clock.now += 5.0
        metrics.log_train(20, {"tokens": 1000})

    messages = [record.getMessage() for record in caplog.records]
    assert messages[1] == "eval step 10 | loss 2.91"
    # 1000 tokens in the 5 s after eval; the ETA still counts eval: 65 s / 10 steps * 20.
    assert messages[2] == "step 20/40 | 200 tok/s | eta 2m10s"


@pytest.mark.parametrize(
    "seconds, expected",
    [(0, "0s"), (-5, "0s"), (59.4, "59s"), (60, "1m00s"), (252, "4m12s"), (3725, "1h02m")],
)
def test_format_duration(seconds, expected):
    assert format_duration(seconds) == expected


def test_total_steps_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="total_steps"):
        MetricsLogger(str(tmp_path), enabled=True, total_steps=0)
    assert list(tmp_path.iterdir()) == []
