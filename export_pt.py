"""Export an Orbax checkpoint to a Hugging Face PyTorch model directory.

    python export_pt.py --checkpoint runs/tiny/checkpoints --output kobart_summary/
    python export_pt.py --checkpoint gs://BUCKET/run/checkpoints --best --output kobart_summary/

The result loads in transformers 4.x and 5.x with ``AutoModelForSeq2SeqLM`` and
``AutoTokenizer`` (which adds ``<s> ... </s>`` and truncates itself), has a model card
(README.md) written from the run, and uploads as it is: ``hf upload USER/NAME kobart_summary/``.
"""

import argparse
import logging
import sys

from kobart_flax.checkpoint import CheckpointError
from kobart_flax.export import DEFAULT_LICENSE, EXPORT_DTYPES, ExportError, export
from kobart_flax.loading import ModelLoadError
from kobart_flax.log_setup import setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint", required=True, help="<workdir>/checkpoints (or the workdir), or a step dir"
    )
    parser.add_argument("--output", required=True, help="directory to create")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--step", type=int, help="export this step (default: the newest)")
    which.add_argument("--best", action="store_true", help="export the best evaluated step")
    parser.add_argument("--dtype", choices=EXPORT_DTYPES, default="float32")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    parser.add_argument(
        "--no-verify", action="store_true", help="skip the PyTorch logits check (needs torch)"
    )
    card = parser.add_argument_group("model card (README.md) header")
    card.add_argument("--license", default=DEFAULT_LICENSE, help="default: KoBART's (mit)")
    card.add_argument(
        "--base-model", help="hub id (default: the run's model.pretrained, if a hub id)"
    )
    card.add_argument(
        "--dataset", action="append", default=[], help="hub dataset id trained on (repeatable)"
    )
    args = parser.parse_args(argv)
    setup_logging()
    try:
        export(
            args.checkpoint,
            args.output,
            step=args.step,
            best=args.best,
            dtype=args.dtype,
            overwrite=args.overwrite,
            check=not args.no_verify,
            license_name=args.license,
            base_model=args.base_model,
            datasets=args.dataset,
        )
    except (CheckpointError, ExportError, ModelLoadError) as error:
        logging.error("%s", error)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
