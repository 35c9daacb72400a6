"""Summarize a file of Korean articles; see kobart_flax/predict.py for the options."""

import sys

from kobart_flax.predict import main

if __name__ == "__main__":
    sys.exit(main())
