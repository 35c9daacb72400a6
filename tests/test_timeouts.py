"""scaled_timeout: a fixed budget on an idle machine, stretched with the load, capped."""

import os

import pytest
from timeouts import MAX_STRETCH, scaled_timeout


@pytest.fixture
def load(monkeypatch):
    """Sets the 1-minute load average of a 4-CPU machine."""
    monkeypatch.setattr(os, "cpu_count", lambda: 4)

    def set_load(one_minute: float) -> None:
        monkeypatch.setattr(os, "getloadavg", lambda: (one_minute, 0.0, 0.0))

    return set_load


@pytest.mark.parametrize(
    ("one_minute", "expected"),
    [
        (0.0, 60.0),  # idle: the budget as written, never less
        (3.9, 60.0),  # under one runnable task per CPU
        (8.0, 120.0),  # two per CPU: twice the time
        (10.0, 150.0),
        (4.0 * MAX_STRETCH, 60.0 * MAX_STRETCH),
        (1000.0, 60.0 * MAX_STRETCH),  # capped: a stuck run still fails
    ],
)
def test_timeout_grows_with_the_load_per_cpu(load, one_minute, expected):
    load(one_minute)
    assert scaled_timeout(60.0) == pytest.approx(expected)


def test_the_load_is_read_at_each_call(load):
    load(0.0)
    assert scaled_timeout(10.0) == pytest.approx(10.0)
    load(12.0)
    assert scaled_timeout(10.0) == pytest.approx(30.0)
