"""Fine-tune KoBART for Korean news summarization.

    python train_flax.py --config configs/tiny.py                 # CPU, offline, bundled data
    python train_flax.py --config configs/kobart_base.py train.workdir=gs://bucket/run1

Any config field can be overridden as ``section.field=value``. On a TPU VM pod, run the
same command on every worker (``scripts/tpu_pod.py`` does); elsewhere, processes join with
``--coordinator HOST:PORT --num_processes N --process_id I`` (see
:mod:`kobart_flax.distributed` and ``scripts/simulate_pod.py``).
"""

import argparse
import logging
import sys

import jax

from kobart_flax import checkpoint, distributed
from kobart_flax.config import ConfigError
from kobart_flax.data_io import DataError
from kobart_flax.log_setup import LOG_FORMAT, setup_logging
from kobart_flax.overrides import parse_args
from kobart_flax.train import TrainingDiverged, train_and_evaluate

# The run saved and stopped on a preemption notice (SIGTERM): not finished, rerun the same
# command to resume. EX_TEMPFAIL from sysexits.h; scripts/tpu_pod.py run --until-done reruns
# on it even while the VM still reads READY.
EXIT_PREEMPTED = 75
LOG_DATE_FORMAT = "%H:%M:%S"


def split_cluster_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """(the multi-process flags, the rest: --config and overrides)."""
    parser = argparse.ArgumentParser(add_help=False)
    distributed.add_arguments(parser)
    return parser.parse_known_args(argv)


def log_per_process() -> None:
    """On a pod, process 0 tells the story; every other host reports only problems."""
    if jax.process_count() == 1:
        return
    root = logging.getLogger()
    for handler in root.handlers:
        handler.setFormatter(
            logging.Formatter(f"[process {jax.process_index()}] {LOG_FORMAT}", LOG_DATE_FORMAT)
        )
    if jax.process_index() != 0:
        root.setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    setup_logging(LOG_DATE_FORMAT)
    cluster_args, config_args = split_cluster_args(argv)
    config = parse_args(config_args)
    try:
        # Before anything else touches JAX: the cluster decides which devices exist.
        distributed.initialize(distributed.options_from(cluster_args))
        log_per_process()
        result = train_and_evaluate(config)
    except (ConfigError, DataError, distributed.DistributedError, TrainingDiverged) as error:
        # Bad input, a wrong launch or settings that diverge are the user's to fix: one clear
        # line, not a traceback.
        logging.error("%s", error)
        return 2
    except (checkpoint.WorkdirLockedError, checkpoint.ResumeError, checkpoint.SaveError) as error:
        # Another run in the workdir, no checkpoint to trust, a disk that filled: the message
        # says what to do, a traceback would only bury it.
        logging.error("%s", error)
        return 2
    return EXIT_PREEMPTED if result.preempted else 0


if __name__ == "__main__":
    sys.exit(main())
