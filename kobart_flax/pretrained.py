"""``FlaxBartForConditionalGeneration``: the transformers 4.x Flax API, owned by this project.

transformers 5 dropped its Flax classes; this wrapper keeps the calls their users know
(``from_pretrained``, ``model(...).logits``, ``model.params``, ``model.config``) on top of
:class:`~kobart_flax.modeling.BartForConditionalGenerationModule`, which training code
uses directly for jit and sharding.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization
from transformers import BartConfig, GenerationConfig

from kobart_flax import hf_io, storage
from kobart_flax.attention import resolve as resolve_attention
from kobart_flax.batching import shift_right
from kobart_flax.generation import GenerationSettings, generate_jit
from kobart_flax.modeling import BartForConditionalGenerationModule, BartSpec

logger = logging.getLogger(__name__)


# transformers' GenerationConfig defaults for the fields our search implements; token ids
# fall back to the model config's.
GENERATION_DEFAULTS = {
    "max_length": 20,
    "min_length": 0,
    "num_beams": 1,
    "length_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "early_stopping": False,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "decoder_start_token_id": None,
    "eos_token_id": None,
    "pad_token_id": None,
}


@dataclasses.dataclass
class GenerateOutput:
    sequences: jax.Array  # [batch, max_length]: start token, summary, </s>, padding


@dataclasses.dataclass
class Seq2SeqLMOutput:
    logits: jax.Array  # [batch, target_len, vocab]


class FlaxBartForConditionalGeneration:
    """BART for summarization in Flax, with the parameter tree of transformers 4.x."""

    def __init__(
        self,
        config: BartConfig,
        dtype: jnp.dtype = jnp.float32,
        params: dict | None = None,
        seed: int = 0,
        attention: str = "auto",
    ):
        """``attention``: the kernel (:mod:`kobart_flax.attention`); "auto" picks the
        platform's fastest. Parameters and outputs do not depend on it."""
        self.config = config
        self.dtype = jnp.dtype(dtype)
        self.module = BartForConditionalGenerationModule(
            BartSpec.from_hf_config(config), self.dtype, resolve_attention(attention, self.dtype)
        )
        self.params = (
            params if params is not None else init_params(self.module, jax.random.key(seed))
        )
        self.generation_config = GenerationConfig.from_model_config(config)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        dtype: jnp.dtype = jnp.float32,
        revision: str | None = None,
    ) -> FlaxBartForConditionalGeneration:
        """Load a Hugging Face BART checkpoint from a local or ``gs://`` directory or the hub
        (or an Orbax checkpoint directory: any source of :func:`kobart_flax.loading.load_model`).

        Reads ``model.safetensors``, ``flax_model.msgpack`` or ``pytorch_model.bin``
        (in that order of preference). ``dtype`` is the compute dtype; parameters stay
        float32.

        Raises:
          kobart_flax.loading.ModelLoadError: no model at a local path, or a hub name that
            cannot be loaded; the message is one line saying what to check.
        """
        # Imported here: loading builds its models with this class.
        from kobart_flax import loading

        return loading.read_pretrained(name_or_path, dtype, revision)

    @classmethod
    def from_hf_files(
        cls, name_or_path: str, dtype: jnp.dtype, revision: str | None
    ) -> FlaxBartForConditionalGeneration:
        """Read a local model directory or hub name as it is, without checking what it is."""
        config = BartConfig.from_pretrained(name_or_path, revision=revision)
        module = BartForConditionalGenerationModule(
            BartSpec.from_hf_config(config), jnp.dtype(dtype)
        )
        weights_file = resolve_weights_file(str(name_or_path), revision)
        logger.info("loading %s", weights_file)
        state_dict = hf_io.read_state_dict(weights_file)
        # The tree's shapes come from eval_shape: no throwaway random init of 124M params.
        target = jax.eval_shape(functools.partial(init_params, module), jax.random.key(0))
        try:
            params = hf_io.state_dict_to_flax(state_dict, target)
        except hf_io.WeightLoadError as error:
            raise hf_io.WeightLoadError(f"{weights_file}: {error}") from None
        model = cls(config, dtype, params=params)
        model.generation_config = load_generation_config(name_or_path, config, revision)
        return model

    @property
    def attention(self) -> str:
        """The attention kernel the module runs (resolved: never "auto")."""
        return self.module.attention

    def use_attention(self, attention: str) -> None:
        """Run ``attention`` (:mod:`kobart_flax.attention`) from now on; params unchanged."""
        self.module = self.module.clone(attention=resolve_attention(attention, self.dtype))

    def generation_settings(self, **overrides) -> GenerationSettings:
        """Settings from ``self.generation_config`` (transformers' defaults) and overrides.

        ``max_new_tokens`` (if given) wins over ``max_length``, as in transformers.
        """
        values = {name: getattr(self.generation_config, name, None) for name in GENERATION_DEFAULTS}
        # Unset fields take transformers' global defaults, as its generate() does.
        values = {
            name: GENERATION_DEFAULTS[name] if value is None else value
            for name, value in values.items()
        }
        max_new_tokens = overrides.pop("max_new_tokens", None)
        values.update({name: value for name, value in overrides.items() if value is not None})
        if max_new_tokens is not None:
            values["max_length"] = 1 + max_new_tokens  # the start token is the prompt
        for name in ("decoder_start_token_id", "eos_token_id", "pad_token_id"):
            if values[name] is None:
                values[name] = getattr(self.config, name)
        if isinstance(values["eos_token_id"], list):
            if len(values["eos_token_id"]) != 1:
                raise ValueError(f"one eos token is supported, got {values['eos_token_id']}")
            values["eos_token_id"] = values["eos_token_id"][0]
        return GenerationSettings(**values)

    def generate(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        max_length: int | None = None,
        max_new_tokens: int | None = None,
        min_length: int | None = None,
        num_beams: int | None = None,
        length_penalty: float | None = None,
        no_repeat_ngram_size: int | None = None,
        early_stopping: bool | str | None = None,
        params: dict | None = None,
    ) -> GenerateOutput:
        """Greedy (num_beams=1) or beam search; tokens equal transformers' ``generate``."""
        input_ids = jnp.asarray(input_ids, jnp.int32)
        if attention_mask is None:
            attention_mask = (input_ids != self.config.pad_token_id).astype(jnp.int32)
        settings = self.generation_settings(
            max_length=max_length,
            max_new_tokens=max_new_tokens,
            min_length=min_length,
            num_beams=num_beams,
            length_penalty=length_penalty,
            no_repeat_ngram_size=no_repeat_ngram_size,
            early_stopping=early_stopping,
        )
        sequences = generate_jit(
            self.module,
            self.params if params is None else params,
            input_ids,
            jnp.asarray(attention_mask, jnp.int32),
            settings,
        )
        return GenerateOutput(sequences=sequences)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``config.json`` and ``flax_model.msgpack``, loadable by ``from_pretrained``.

        Needs the params on this host (device_get); sharded multi-host checkpoints are
        Orbax's job. A ``gs://`` directory is written aside and replaced as a whole.
        """
        if storage.is_remote(directory):
            storage.publish_directory(directory, self.save_pretrained)
            return
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.save_pretrained(directory)
        params = jax.device_get(self.params)
        (directory / hf_io.FLAX_FILE).write_bytes(serialization.to_bytes(params))

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        decoder_input_ids: jax.Array | None = None,
        decoder_attention_mask: jax.Array | None = None,
        params: dict | None = None,
        train: bool = False,
        dropout_rng: jax.Array | None = None,
    ) -> Seq2SeqLMOutput:
        input_ids = jnp.asarray(input_ids, jnp.int32)
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        if decoder_input_ids is None:
            decoder_input_ids = shift_right(
                np.asarray(input_ids), self.config.decoder_start_token_id, self.config.pad_token_id
            )
        if train and dropout_rng is None:
            raise ValueError("train=True needs a dropout_rng")
        rngs = {"dropout": dropout_rng} if train else {}
        logits = self.module.apply(
            {"params": self.params if params is None else params},
            input_ids,
            jnp.asarray(attention_mask),
            jnp.asarray(decoder_input_ids, jnp.int32),
            None if decoder_attention_mask is None else jnp.asarray(decoder_attention_mask),
            deterministic=not train,
            rngs=rngs,
        )
        return Seq2SeqLMOutput(logits=logits)


def load_generation_config(
    name_or_path: str | os.PathLike, config: BartConfig, revision: str | None
) -> GenerationConfig:
    """The checkpoint's ``generation_config.json`` if it has one, else the model config's."""
    try:
        return GenerationConfig.from_pretrained(name_or_path, revision=revision)
    except OSError:
        return GenerationConfig.from_model_config(config)


def init_params(module: BartForConditionalGenerationModule, rng: jax.Array) -> dict:
    """Random parameters (transformers' init: normal(init_std), zero biases)."""
    dummy = jnp.zeros((1, 2), jnp.int32)
    return module.init(rng, dummy, jnp.ones_like(dummy), dummy)["params"]


def resolve_weights_file(name_or_path: str, revision: str | None) -> Path:
    """Find the weights of a local directory, or download them from the hub."""
    local = Path(name_or_path)
    if local.is_dir():
        for filename in hf_io.WEIGHT_FILES:
            if (local / filename).is_file():
                return local / filename
        raise FileNotFoundError(
            f"{local}: no weights file; expected one of {', '.join(hf_io.WEIGHT_FILES)}"
        )

    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    for filename in hf_io.WEIGHT_FILES:
        try:
            return Path(hf_hub_download(name_or_path, filename, revision=revision))
        except EntryNotFoundError:
            continue
    raise FileNotFoundError(
        f"hub repository {name_or_path}: no weights file; expected one of "
        f"{', '.join(hf_io.WEIGHT_FILES)}"
    )
