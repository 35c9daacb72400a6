"""JAX's persistent compilation cache: compiled programs kept on disk (or gs://) and reused.

A resumed training run, a second ``predict.py`` and a restarted demo compile the same
programs as the first; with the cache they load them instead (the key is the program and
the compiler's version and flags, never the weights, so models of one architecture share
entries). On a pod every host computes the same keys, so a cache in the run's gs:// workdir
serves them all.

Where: training uses ``<workdir>/compile_cache`` (``train.compile_cache_dir`` picks another or
"none"); ``predict.py`` and the demo use ``$KOBART_FLAX_COMPILE_CACHE``, else
``~/.cache/kobart_flax/jax`` (under ``$XDG_CACHE_HOME`` when set): a model directory may be
read-only or on the hub, and one user cache serves every model they run.
"""

from __future__ import annotations

import argparse
import logging
import os

import jax
from jax.experimental.compilation_cache import compilation_cache

logger = logging.getLogger(__name__)

OFF = "none"
ENVIRONMENT_VARIABLE = "KOBART_FLAX_COMPILE_CACHE"
TRAINING_SUBDIR = "compile_cache"  # under train.workdir


def enable(directory: str) -> None:
    """Caches every compile from now on in ``directory`` (local or gs://); ``"none"``: off.

    Call it before the first compile: JAX builds the cache once per process (it is rebuilt
    here when the directory changes, as in tests running several jobs in one process).
    """
    directory = "" if directory == OFF else directory
    if directory == (jax.config.jax_compilation_cache_dir or ""):
        return
    jax.config.update("jax_compilation_cache_dir", directory or None)
    # JAX's defaults skip programs that compile in under a second, which is every one of a
    # small model on a CPU: together still tens of seconds at each start.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    compilation_cache.reset_cache()
    if directory:
        logger.info("compiled programs are cached in %s", directory)


def training_directory(workdir: str, configured: str) -> str:
    """``train.compile_cache_dir`` resolved: "" is the run's own, under its workdir."""
    return configured or os.path.join(workdir, TRAINING_SUBDIR)


def user_directory(environ: dict[str, str] | None = None) -> str:
    """predict.py's and the demo's default: ``$KOBART_FLAX_COMPILE_CACHE``, else the user's
    cache directory."""
    environ = os.environ if environ is None else environ
    if environ.get(ENVIRONMENT_VARIABLE):
        return environ[ENVIRONMENT_VARIABLE]
    cache_home = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache_home, "kobart_flax", "jax")


def add_argument(parser: argparse.ArgumentParser) -> None:
    """``--compile-cache``, for the commands that serve or apply a model."""
    parser.add_argument(
        "--compile-cache",
        default=user_directory(),
        help=f"directory (local or gs://) of compiled programs reused by the next start, or "
        f"'{OFF}' (default: ${ENVIRONMENT_VARIABLE}, else %(default)s)",
    )
