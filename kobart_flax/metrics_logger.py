"""Training logs: one readable console line per log step, and TensorBoard scalars.

On a pod every host runs the same training loop, so every host constructs a
MetricsLogger; only process 0 passes enabled=True. A disabled logger does nothing and
creates no files, which keeps the loop free of `if jax.process_index() == 0` branches.
"""

import json
import logging
import os
import time
from collections.abc import Callable, Mapping

# tensorboardX writes event files in pure Python (gs:// too, with google-cloud-storage);
# tf.summary or tensorboard's writer would pull in TensorFlow, far too heavy for a logger.
from tensorboardX import SummaryWriter

logger = logging.getLogger(__name__)

# The trainer passes tokens processed since the previous log_train call under this name;
# the logger turns it into a rate instead of logging the raw count.
TOKENS_KEY = "tokens"
LEARNING_RATE_KEYS = ("lr", "learning_rate")


def format_duration(seconds: float) -> str:
    """4m12s style: precise enough for an ETA, short enough for a log line."""
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def _format_metric(name: str, value: float) -> str:
    # Learning rates live around 1e-5..1e-3, where fixed-point shows only zeros.
    if name in LEARNING_RATE_KEYS:
        return f"{name} {value:.1e}"
    return f"{name} {value:.4g}"


class MetricsLogger:
    """Console and TensorBoard logging of train and eval metrics.

    ETA and tokens/s are measured from the first log_train call, not from construction:
    the steps before it include XLA compilation and would skew both.
    """

    def __init__(
        self,
        workdir: str,
        *,
        enabled: bool,
        total_steps: int,
        clock: Callable[[], float] = time.monotonic,
    ):
        if total_steps <= 0:
            raise ValueError(f"total_steps must be positive, got {total_steps}")
        self._total_steps = total_steps
        self._clock = clock
        # Set by the first log_train call: the reference point for the ETA.
        self._first_step: int | None = None
        self._first_time = 0.0
        # Start of the current throughput window; log_eval restarts it so eval time does
        # not count as training time.
        self._window_start: float | None = None
        self._writer = (
            SummaryWriter(logdir=os.path.join(workdir, "tensorboard")) if enabled else None
        )

    def log_hparams(self, config_dict: Mapping) -> None:
        """Writes the run's config to TensorBoard's text tab; call once per run."""
        if self._writer is None:
            return
        config_json = json.dumps(config_dict, indent=2, sort_keys=True)
        # Indented by four spaces, TensorBoard's markdown renders it as a code block.
        as_code_block = "\n".join("    " + line for line in config_json.splitlines())
        self._writer.add_text("config", as_code_block, global_step=0)

    def log_train(self, step: int, metrics: Mapping[str, float]) -> None:
        """`step 120/900 | loss 3.412 | lr 9.1e-04 | 5,312 tok/s | eta 4m12s`, and
        TensorBoard scalars under train/<name>.

        An optional `tokens` entry is the number of tokens trained on since the previous
        log_train call; it is logged as train/tokens_per_sec. The first call shows neither
        tok/s nor ETA: there is no interval yet to measure them over.
        """
        if self._writer is None:
            return
        now = self._clock()
        parts = [f"step {step}/{self._total_steps}"]
        scalars = {}
        for name, value in metrics.items():
            if name == TOKENS_KEY:
                continue
            scalars[name] = float(value)
            parts.append(_format_metric(name, scalars[name]))

        if TOKENS_KEY in metrics and self._window_start is not None:
            elapsed = now - self._window_start
            if elapsed > 0:
                scalars["tokens_per_sec"] = float(metrics[TOKENS_KEY]) / elapsed
                parts.append(f"{scalars['tokens_per_sec']:,.0f} tok/s")

        if self._first_step is None:
            self._first_step, self._first_time = step, now
        elif step > self._first_step:
            seconds_per_step = (now - self._first_time) / (step - self._first_step)
            remaining_steps = max(0, self._total_steps - step)
            parts.append(f"eta {format_duration(seconds_per_step * remaining_steps)}")
        self._window_start = now

        logger.info(" | ".join(parts))
        for name, value in scalars.items():
            self._writer.add_scalar(f"train/{name}", value, global_step=step)

    def log_eval(self, step: int, metrics: Mapping[str, float]) -> None:
        """`eval step 100 | loss 2.91 | ...`, and TensorBoard scalars under eval/<name>."""
        if self._writer is None:
            return
        scalars = {name: float(value) for name, value in metrics.items()}
        parts = [f"eval step {step}"] + [_format_metric(n, v) for n, v in scalars.items()]
        logger.info(" | ".join(parts))
        for name, value in scalars.items():
            self._writer.add_scalar(f"eval/{name}", value, global_step=step)
        # Eval ran between two train logs; keep it out of the next tokens/s.
        if self._window_start is not None:
            self._window_start = self._clock()

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
