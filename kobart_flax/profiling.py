"""A ``jax.profiler`` trace of a few training steps, where TensorBoard's profile tab finds it.

``train.profile_steps`` steps from ``train.profile_start`` (1-based; the default skips the
first steps, whose compiles would fill the trace) are traced into
``<workdir>/tensorboard/plugins/profile/<run>/``, next to the metrics' event files. Each host
traces its own devices and writes its own file.
"""

from __future__ import annotations

import logging
import os

import jax

logger = logging.getLogger(__name__)

TENSORBOARD_DIR = "tensorboard"  # under train.workdir, as kobart_flax.metrics_logger writes


class StepTrace:
    """Starts the trace before step ``start`` and stops it after step ``start + count - 1``.

    A context manager: a run that ends inside the window (its last step, a preemption) still
    stops the trace and writes what it has.
    """

    def __init__(self, workdir: str, start: int, count: int):
        self.log_dir = os.path.join(workdir, TENSORBOARD_DIR)
        self.start, self.last = start, start + count - 1
        self.enabled = count > 0
        self.active = False

    def __enter__(self) -> StepTrace:
        return self

    def __exit__(self, *exc_info) -> None:
        if self.active:
            self._stop()

    def before_step(self, step: int) -> None:
        """``step``: the 1-based number of the step about to be dispatched."""
        if self.enabled and step == self.start:
            logger.info("tracing steps %d to %d into %s", self.start, self.last, self.log_dir)
            jax.profiler.start_trace(self.log_dir)
            self.active = True

    def after_step(self, step: int, outputs) -> None:
        """``outputs`` of the step just dispatched: waited for at the window's end, so the
        trace holds the devices' work and not only its dispatch."""
        if self.active and step == self.last:
            jax.block_until_ready(outputs)
            self._stop()

    def _stop(self) -> None:
        jax.profiler.stop_trace()
        self.active = False
        logger.info("wrote the profile of steps %d to %d", self.start, self.last)
