"""Orbax checkpoint -> Hugging Face PyTorch model directory.

The directory holds ``config.json`` (KoBART's token ids written out explicitly),
``model.safetensors`` (float32 by default), ``generation_config.json`` (the settings the
run evaluated with) and the tokenizer files; current transformers loads it with
``BartForConditionalGeneration``, ``AutoModelForSeq2SeqLM`` or ``pipeline("summarization")``
without JAX. The weight mapping is :func:`kobart_flax.hf_io.flax_to_state_dict`, the
inverse of the import table.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from transformers import BartConfig, GenerationConfig

from kobart_flax import checkpoint, hf_io
from kobart_flax.pretrained import FlaxBartForConditionalGeneration

logger = logging.getLogger(__name__)

EXPORT_DTYPES = ("float32", "bfloat16", "float16")
VERIFY_TOLERANCE = 1e-3  # max abs logit difference, float32
# For checkpoints whose config predates the decoding section: the original project's beam 4.
DEFAULT_DECODING = {"num_beams": 4, "max_length": 128, "length_penalty": 1.0}


class ExportError(RuntimeError):
    """The export cannot go ahead, or its result does not match the checkpoint."""


def hf_config(model_config: Mapping[str, Any], tokenizer) -> BartConfig:
    """The model config with every special id written explicitly.

    Derived KoBART checkpoints disagree on ``decoder_start_token_id`` (1 or 2), and
    transformers' defaults differ from KoBART's ids, so nothing is left to a default.
    """
    config = BartConfig.from_dict(dict(model_config))
    config.architectures = ["BartForConditionalGeneration"]
    config.bos_token_id = tokenizer.bos_token_id
    config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    config.forced_eos_token_id = tokenizer.eos_token_id
    if config.decoder_start_token_id is None:
        config.decoder_start_token_id = tokenizer.eos_token_id
    return config


def generation_config(config: BartConfig, run_config: Mapping[str, Any]) -> GenerationConfig:
    """The run's ``decoding`` settings (what its ROUGE evaluation used) as transformers'."""
    settings = {**DEFAULT_DECODING, **run_config.get("decoding", {})}
    return GenerationConfig(
        num_beams=settings["num_beams"],
        max_length=settings["max_length"],
        min_length=settings.get("min_length", 0),
        length_penalty=settings["length_penalty"],
        no_repeat_ngram_size=settings.get("no_repeat_ngram_size", 0),
        early_stopping=settings.get("early_stopping", False),
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        decoder_start_token_id=config.decoder_start_token_id,
        forced_eos_token_id=config.forced_eos_token_id,
    )


def write_model_dir(
    output: Path,
    params: dict,
    config: BartConfig,
    generation: GenerationConfig,
    tokenizer,
    dtype: str,
) -> None:
    import jax.numpy as jnp
    from safetensors.flax import save_file

    output.mkdir(parents=True)
    config.save_pretrained(output)
    generation.save_pretrained(output)
    tokenizer.save_pretrained(output)
    state_dict = hf_io.flax_to_state_dict(jax.device_get(params))
    # Fresh arrays per name: safetensors refuses tensors that share memory, and the tied
    # embeddings are one array in Flax. (The flax backend also writes bfloat16.)
    tensors = {name: jnp.asarray(array, dtype=dtype) for name, array in state_dict.items()}
    save_file(tensors, str(output / hf_io.SAFETENSORS_FILE), metadata={"format": "pt"})


def verify(output: Path, flax_model: FlaxBartForConditionalGeneration, tokenizer) -> float:
    """Load ``output`` with PyTorch and compare logits with the Flax model; return max diff."""
    import torch
    from transformers import BartForConditionalGeneration

    torch_model = BartForConditionalGeneration.from_pretrained(output, dtype=torch.float32).eval()
    texts = ["한국어 뉴스 기사를 요약합니다.", "Export check: 숫자 123과 English 단어."]
    batch = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="np")
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
    decoder_input_ids = np.array([[flax_model.config.decoder_start_token_id, 5, 6, 7]] * 2)
    with torch.no_grad():
        expected = torch_model(
            input_ids=torch.tensor(input_ids),
            attention_mask=torch.tensor(attention_mask),
            decoder_input_ids=torch.tensor(decoder_input_ids),
        ).logits.numpy()
    got = np.asarray(flax_model(input_ids, attention_mask, decoder_input_ids).logits)
    return float(np.max(np.abs(got - expected)))


def export(
    checkpoint_dir: str,
    output: str,
    *,
    step: int | None = None,
    best: bool = False,
    dtype: str = "float32",
    overwrite: bool = False,
    check: bool = True,
) -> Path:
    """Export one checkpoint step (default the newest) to ``output``; returns its path."""
    if dtype not in EXPORT_DTYPES:
        raise ExportError(f"--dtype must be one of {EXPORT_DTYPES}, got {dtype!r}")
    output_path = Path(output)
    if output_path.exists():
        if not overwrite:
            raise ExportError(f"{output_path} exists; pass --overwrite to replace it")
        shutil.rmtree(output_path)
    params, metadata = checkpoint.restore_params(checkpoint_dir, step, best=best)
    tokenizer = checkpoint.load_tokenizer(checkpoint_dir)
    config = hf_config(metadata["model_config"], tokenizer)
    logger.info("restored step %s of %s", metadata.get("step"), checkpoint_dir)
    write_model_dir(
        output_path,
        params,
        config,
        generation_config(config, metadata.get("config", {})),
        tokenizer,
        dtype,
    )
    logger.info("wrote %s", output_path)
    if check:
        flax_model = FlaxBartForConditionalGeneration(config, params=params)
        difference = verify(output_path, flax_model, tokenizer)
        tolerance = VERIFY_TOLERANCE if dtype == "float32" else 0.1
        if difference > tolerance:
            raise ExportError(
                f"{output_path}: PyTorch logits differ from the checkpoint's by {difference:.2e} "
                f"(> {tolerance}); the export is wrong, do not use it"
            )
        logger.info("verified: max abs logit difference %.2e", difference)
    return output_path
