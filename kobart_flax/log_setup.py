"""Logging for the commands: one format, and the libraries' routine lines turned down.

Each command's ``main`` (train_flax.py, predict, export_pt.py, the demo) calls
:func:`setup_logging`; importing kobart_flax changes no logger, so a program that uses it as
a library keeps its own logging settings.
"""

import logging

LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"

# Orbax warnings that are expected here: a save without an evaluation (only evaluated steps
# carry metrics; the others are kept as one of the newest K), and every read-only manager.
_EXPECTED_ORBAX_WARNINGS = ("did not provide metrics", "Given directory is read only")

# What Orbax logs, with a traceback each, from every thread a failed background save runs
# (hundreds of lines for one full disk). TrainCheckpointer raises that failure in the training
# loop at the next step, as one SaveError naming the step and the cause, so these only bury it.
_BACKGROUND_SAVE_FAILURES = (
    "_SignalingThread.run() raised an exception",
    "Handler Commit operations or the Commit callback in background save thread",
    "Save Finalize thread",
    "Checkpointer failed: one or more items may not be finalized",
)

# asyncio reports each of Orbax's per-array write futures that a failed background save leaves
# unretrieved ("... exception was never retrieved", dozens for one full disk), at exit or
# whenever they are collected; they all name the step's temporary directory.
_UNRETRIEVED = "exception was never retrieved"
_ORBAX_TEMPORARY_DIR = ".orbax-checkpoint-tmp"

# Loggers set to WARNING unless the user chose a level: Orbax logs some 60 INFO lines per
# save and restore through absl, gcsfs and fsspec a line for every file they open.
_CHATTY_LOGGERS = ("absl", "gcsfs", "fsspec")


# Where Orbax's lines arrive: its own through absl, its write futures' through asyncio.
_ORBAX_LOGGERS = ("absl", "asyncio")


class _QuietOrbax(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.levelno >= logging.ERROR:
            unretrieved_write = _UNRETRIEVED in message and _ORBAX_TEMPORARY_DIR in message
            return not (
                unretrieved_write
                or any(failure in message for failure in _BACKGROUND_SAVE_FAILURES)
            )
        return not any(expected in message for expected in _EXPECTED_ORBAX_WARNINGS)


def setup_logging(datefmt: str | None = None) -> None:
    """INFO lines in ``LOG_FORMAT`` on stderr, without the libraries' routine lines.

    A level set before the call stays: logging.getLogger("absl").setLevel(logging.INFO)
    brings Orbax's lines back.
    """
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, datefmt=datefmt)
    for name in _CHATTY_LOGGERS:
        if logging.getLogger(name).level == logging.NOTSET:
            logging.getLogger(name).setLevel(logging.WARNING)
    for name in _ORBAX_LOGGERS:
        orbax_logger = logging.getLogger(name)
        if not any(isinstance(known, _QuietOrbax) for known in orbax_logger.filters):
            orbax_logger.addFilter(_QuietOrbax())
