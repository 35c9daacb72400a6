"""Serve the summarization demo page; see kobart_flax/demo.py for the options."""

import sys

from kobart_flax.demo import main

if __name__ == "__main__":
    sys.exit(main())
