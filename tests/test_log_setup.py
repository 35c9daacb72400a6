"""Logging is the commands' choice: importing the package leaves every logger as it was."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )


def test_importing_the_library_changes_no_logger():
    result = run_python(
        "import logging\n"
        "import kobart_flax.checkpoint, kobart_flax.storage, kobart_flax.train\n"
        "names = ('absl', 'gcsfs', 'fsspec')\n"
        "print([logging.getLogger(n).level for n in names], logging.getLogger('absl').filters,\n"
        "      logging.getLogger().handlers)\n"
    )
    assert result.stdout.strip() == "[0, 0, 0] [] []"


def test_setup_logging_drops_routine_library_lines_but_keeps_the_rest():
    result = run_python(
        "import logging\n"
        "from kobart_flax.log_setup import setup_logging\n"
        "logging.getLogger('fsspec').setLevel(logging.DEBUG)  # the user's choice stays\n"
        "setup_logging()\n"
        "absl = logging.getLogger('absl')\n"
        "absl.info('orbax: 60 lines per save')\n"
        "absl.warning('step 3 did not provide metrics')\n"
        "absl.error('Save Finalize thread failed')\n"
        "absl.warning('a warning of its own')\n"
        "futures = logging.getLogger('asyncio')\n"
        "futures.error('_GatheringFuture exception was never retrieved\\nfuture: <ValueError('\n"
        "              '\"run/checkpoints/3.orbax-checkpoint-tmp/d/1\": File too large>')\n"
        "futures.error('Task exception was never retrieved: an error of its own')\n"
        "logging.getLogger('fsspec').debug('opened a file')\n"
        "logging.getLogger('kobart_flax.train').info('step 1')\n"
    )
    lines = result.stderr.splitlines()
    assert [line.split(" ", 3)[-1] for line in lines] == [
        "a warning of its own",
        "Task exception was never retrieved: an error of its own",
        "opened a file",
        "step 1",
    ]
