"""Fine-tune KoBART for Korean news summarization.

    python train_flax.py --config configs/tiny.py                 # CPU, offline, bundled data
    python train_flax.py --config configs/kobart_base.py train.workdir=gs://bucket/run1

Any config field can be overridden as ``section.field=value``.
"""

import logging
import sys

from kobart_flax.config import ConfigError, parse_args
from kobart_flax.data_io import DataError
from kobart_flax.train import train_and_evaluate


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S"
    )
    config = parse_args(argv)
    try:
        train_and_evaluate(config)
    except (ConfigError, DataError) as error:
        # Bad input is the user's to fix: one clear line, not a traceback.
        logging.error("%s", error)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
