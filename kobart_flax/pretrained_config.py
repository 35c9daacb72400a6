"""A ``model.pretrained``'s config.json, read without its weights, jax or a download.

Config validation checks data lengths and the mesh against the real architecture of a
pretrained model; this finds its config.json in a local directory, on ``gs://``, or in the
Hugging Face hub cache. A hub model never downloaded here is not fetched (validation runs
before anything else and must not wait on the network): the caller gets None and checks once
the model is loaded.
"""

import json
import os
from typing import Any

CONFIG_FILE = "config.json"


def read_pretrained_config(name_or_path: str) -> dict[str, Any] | None:
    """The parsed config.json of a local or ``gs://`` model directory or a cached hub model;
    None where it is not at hand (a hub model not in the cache, a directory without one)."""
    from kobart_flax import storage  # gcsfs and etils: only for the paths that need them

    if storage.is_remote(name_or_path):
        config_file = storage.as_path(name_or_path) / CONFIG_FILE
        text = config_file.read_text() if config_file.exists() else None
    elif os.path.isdir(name_or_path):
        config_file = os.path.join(name_or_path, CONFIG_FILE)
        text = _read_text(config_file) if os.path.isfile(config_file) else None
    else:
        config_file = _hub_cache_file(name_or_path)
        text = None if config_file is None else _read_text(config_file)
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{config_file}: not JSON ({error})") from None


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8") as file:
        return file.read()


def _hub_cache_file(repo_id: str) -> str | None:
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        found = try_to_load_from_cache(repo_id, CONFIG_FILE)
    except HFValidationError:  # neither a directory nor a hub name: loading will say so
        return None
    # A str is a cached file; None and a "known missing" marker both mean not here.
    return found if isinstance(found, str) else None
