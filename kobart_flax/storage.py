"""One path API for local files and ``gs://`` buckets.

Every path a user gives (workdir, data, model, tokenizer, predict input and output) goes
through ``etils.epath``: ``pathlib.Path("gs://b/run")`` silently becomes the local path
``gs:/b/run``. Libraries that only read local directories (transformers' tokenizers and
configs) get a local copy of a remote directory; directories this project writes are
written aside and renamed into place, so a reader never sees half a model and an older
model is not lost to a failed write.
"""

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator

import fsspec
from etils import epath

REMOTE_SCHEMES = ("gs://",)

# gcsfs caches directory listings for the life of a process and refreshes them only on its
# own writes, but Orbax writes checkpoints through tensorstore: a cached listing would hide
# new steps from the same process (and from a long-running demo or export). A listing is
# one request, so skip the cache.
fsspec.config.conf.setdefault("gs", {})["use_listings_cache"] = False


def is_remote(path: str | os.PathLike) -> bool:
    return str(path).startswith(REMOTE_SCHEMES)


def as_path(path: str | os.PathLike) -> epath.Path:
    """An ``epath.Path``, made absolute when local: Orbax refuses relative paths."""
    text = os.fspath(path)
    return epath.Path(text if "://" in text else os.path.abspath(text))


@contextlib.contextmanager
def local_directory(name_or_path: str | os.PathLike) -> Iterator[str]:
    """A local directory with the files of ``name_or_path``.

    A bucket directory is copied to a temporary directory (deleted on exit); anything else
    (a local directory, a hub name) is passed through unchanged for the caller to resolve.
    Model and tokenizer directories are flat, so only the top level is copied.
    """
    if not is_remote(name_or_path):
        yield os.fspath(name_or_path)
        return
    source = epath.Path(os.fspath(name_or_path))
    if not source.is_dir():
        raise FileNotFoundError(f"{source}: no such directory")
    with tempfile.TemporaryDirectory(prefix="kobart_flax_") as local:
        for file in source.iterdir():
            if not file.is_dir():
                (epath.Path(local) / file.name).write_bytes(file.read_bytes())
        yield local


def publish_directory(target: str | os.PathLike, write: Callable[[str], None]) -> epath.Path:
    """Has ``write(local_dir)`` fill a directory, then puts it at ``target``.

    The files go to ``<target>.tmp`` first; only once all of them are there is an existing
    ``target`` removed and the new one renamed into place. Locally the rename is atomic; on
    GCS it is a copy per file, but a failed write still leaves the previous ``target`` whole.
    """
    target = as_path(target)
    staging = target.parent / f"{target.name}.tmp"
    if staging.exists():
        staging.rmtree()  # a leftover of an interrupted publish, never a finished result
    if is_remote(target):
        with tempfile.TemporaryDirectory(prefix="kobart_flax_") as local:
            write(local)
            staging.mkdir(parents=True)
            for file in sorted(os.listdir(local)):
                (staging / file).write_bytes((epath.Path(local) / file).read_bytes())
    else:
        staging.mkdir(parents=True)
        write(os.fspath(staging))
    if not is_remote(target):
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
        return target
    # GCS has no directory rename: a server-side copy per file, then the staging is dropped.
    # (gcsfs's rename tries the move API first, which flat buckets and emulators refuse.)
    if target.exists():
        target.rmtree()
    target.mkdir(parents=True)
    for file in staging.iterdir():
        file.copy(target / file.name)
    staging.rmtree()
    return target
