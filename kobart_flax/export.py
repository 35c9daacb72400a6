"""Orbax checkpoint -> Hugging Face PyTorch model directory.

The directory holds ``config.json`` (KoBART's token ids written out explicitly),
``model.safetensors`` (float32 by default; the tied embedding once), ``generation_config.json``
(the settings the run evaluated with), a tokenizer that adds ``<s> ... </s>`` and truncates by
itself, and ``README.md`` (the model card, from the run's history). transformers 4.x and 5.x
load it with ``AutoTokenizer`` and ``AutoModelForSeq2SeqLM`` without JAX, and 4.x's
``pipeline("summarization")`` gives the summaries of ``predict.py``. The weight mapping is
:func:`kobart_flax.hf_io.flax_to_state_dict`, the inverse of the import table.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from transformers import BartConfig, GenerationConfig

from kobart_flax import checkpoint, hf_io, loading, storage
from kobart_flax.model_card import hub_base_model, model_card
from kobart_flax.positions import usable_positions
from kobart_flax.pretrained import FlaxBartForConditionalGeneration

logger = logging.getLogger(__name__)

EXPORT_DTYPES = ("float32", "bfloat16", "float16")
VERIFY_TOLERANCE = 1e-3  # max abs logit difference, float32
# For checkpoints whose config predates the decoding section: the original project's beam 4.
DEFAULT_DECODING = {"num_beams": 4, "max_length": 128, "length_penalty": 1.0}
MODEL_CARD_FILE = "README.md"
DEFAULT_LICENSE = "mit"  # gogamza/kobart-base-v1's license, which a fine-tune inherits


class ExportError(RuntimeError):
    """The export cannot go ahead, or its result does not match the checkpoint."""


def hf_config(model_config: Mapping[str, Any], tokenizer) -> BartConfig:
    """The model config with every special id written explicitly.

    Derived KoBART checkpoints disagree on ``decoder_start_token_id`` (1 or 2), and
    transformers' defaults differ from KoBART's ids, so nothing is left to a default.
    """
    config = BartConfig.from_dict(dict(model_config))
    config.architectures = ["BartForConditionalGeneration"]
    # The Flax model has one embedding for encoder, decoder and LM head; the weights file
    # stores it once, and this flag is what makes transformers tie the other three to it.
    config.tie_word_embeddings = True
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


def tokenizer_files(tokenizer, max_source_tokens: int) -> dict[str, str]:
    """``tokenizer.json`` and ``tokenizer_config.json`` for the export, by file name.

    This project encodes with ``add_special_tokens=False`` and adds the ids itself
    (:func:`kobart_flax.tokenization.encode_examples`); users call
    ``tokenizer(text, truncation=True)`` and ``pipeline("summarization")``. So the exported
    tokenizer adds ``<s> text </s>`` itself (a post-processor, which ``add_special_tokens=False``
    skips, leaving the project's own encoding as it was) and truncates to ``max_source_tokens``
    keeping ``</s>``: exactly the training ids. The config names ``PreTrainedTokenizerFast``
    (KoBART's own class, loaded by transformers 4 and 5; 5's ``save_pretrained`` writes
    ``TokenizersBackend``, unknown to 4.x) and only portable keys.
    """
    from tokenizers import Tokenizer
    from tokenizers.processors import TemplateProcessing

    bos, eos = tokenizer.bos_token, tokenizer.eos_token
    if bos is None or eos is None:
        raise ExportError(f"the checkpoint's tokenizer has no bos/eos token ({bos!r}, {eos!r})")
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.post_processor = TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",  # BART's pair format
        special_tokens=[(bos, tokenizer.bos_token_id), (eos, tokenizer.eos_token_id)],
    )
    # Truncation and padding come from the call (truncation=True uses model_max_length).
    backend.no_truncation()
    backend.no_padding()
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **{
            name: getattr(tokenizer, name)
            for name in ("bos_token", "eos_token", "pad_token", "unk_token", "mask_token")
            if getattr(tokenizer, name) is not None
        },
        "model_max_length": max_source_tokens,
        # No token_type_ids: BART has no segment embeddings, and generate() refuses them.
        "model_input_names": ["input_ids", "attention_mask"],
        # Older transformers 4.x defaulted to True, which rewrites " ." in decoded Korean text.
        "clean_up_tokenization_spaces": False,
    }
    serialized = json.loads(backend.to_str())
    merges = serialized["model"].get("merges")
    # tokenizers >= 0.20 writes BPE merges as pairs, which 0.19 (under transformers 4.40 to
    # 4.44) cannot read; every version reads "a b" strings, exact where no token has a space.
    if merges and all(isinstance(m, list) and " " not in "".join(m) for m in merges):
        serialized["model"]["merges"] = [" ".join(merge) for merge in merges]
    return {
        "tokenizer.json": json.dumps(serialized, indent=2, ensure_ascii=False) + "\n",
        "tokenizer_config.json": json.dumps(config, indent=2, ensure_ascii=False) + "\n",
    }


def write_model_dir(
    output: Path,
    params: dict,
    config: BartConfig,
    generation: GenerationConfig,
    tokenizer,
    dtype: str,
    card: str,
) -> None:
    import jax.numpy as jnp
    from safetensors.flax import save

    output.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(output)
    generation.save_pretrained(output)
    max_source_tokens = usable_positions(config.max_position_embeddings)
    for name, text in tokenizer_files(tokenizer, max_source_tokens).items():
        (output / name).write_text(text, encoding="utf-8")
    (output / MODEL_CARD_FILE).write_text(card, encoding="utf-8")
    state_dict = hf_io.flax_to_state_dict(jax.device_get(params), include_tied=False)
    # (The flax backend writes bfloat16 too.)
    tensors = {name: jnp.asarray(array, dtype=dtype) for name, array in state_dict.items()}
    # Bytes, not save_file: that one writes through a private temporary file, leaving the
    # weights mode 0600 where every other output follows the umask.
    data = save(tensors, metadata={"format": "pt"})
    (output / hf_io.SAFETENSORS_FILE).write_bytes(data)


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
    license_name: str = DEFAULT_LICENSE,
    base_model: str | None = None,
    datasets: Sequence[str] = (),
) -> Path:
    """Export one checkpoint step (default the newest) to ``output``; returns its path.

    ``license_name``, ``base_model`` (default: the run's ``model.pretrained`` if it is a hub
    id) and ``datasets`` (hub dataset ids) go into the model card's header.
    """
    if dtype not in EXPORT_DTYPES:
        raise ExportError(f"--dtype must be one of {EXPORT_DTYPES}, got {dtype!r}")
    output_path = Path(output)
    check_output(output_path, overwrite)
    source = loading.resolve_source(checkpoint_dir)
    if source.kind != loading.CHECKPOINT:
        raise ExportError(
            f"{checkpoint_dir}: not an Orbax checkpoint (a run's workdir, its checkpoints/ or one "
            "step directory in it)"
        )
    checkpoint_dir = source.location
    if best:
        # Resolved here so that the card reads the history of the same step.
        step = checkpoint.best_step(checkpoint_dir)
    loaded = loading.load_model(source, step=step, best=best)
    params, metadata, tokenizer = loaded.model.params, loaded.metadata, loaded.tokenizer
    history = checkpoint.read_history(checkpoint_dir, step)
    position = checkpoint.read_json_item(checkpoint_dir, checkpoint.DATA_ITERATOR, step)
    config = hf_config(metadata["model_config"], tokenizer)
    generation = generation_config(config, metadata.get("config", {}))
    logger.info("restored step %d of %s", len(history["train_losses"]), checkpoint_dir)
    card = model_card(
        metadata=metadata,
        history=history,
        steps_per_epoch=position.get("steps_per_epoch"),
        generation=generation.to_dict(),
        max_source_tokens=usable_positions(config.max_position_embeddings),
        dtype=dtype,
        license_name=license_name,
        base_model=base_model
        or hub_base_model(metadata.get("config", {}).get("model", {}).get("pretrained")),
        datasets=datasets,
    )

    def write_and_verify(staging: str) -> None:
        write_model_dir(Path(staging), params, config, generation, tokenizer, dtype, card)
        if not check:
            return
        flax_model = FlaxBartForConditionalGeneration(config, params=params)
        difference = verify(Path(staging), flax_model, tokenizer)
        tolerance = VERIFY_TOLERANCE if dtype == "float32" else 0.1
        if difference > tolerance:
            raise ExportError(
                f"PyTorch logits of the export differ from the checkpoint's by {difference:.2e} "
                f"(> {tolerance}); the export is wrong and {output_path} was left as it was"
            )
        logger.info("verified: max abs logit difference %.2e", difference)

    # Written and verified aside, so a failure at any point leaves an earlier export whole.
    storage.publish_directory(output_path, write_and_verify)
    logger.info("wrote %s", output_path)
    return output_path


def check_output(output: Path, overwrite: bool) -> None:
    """Refuses an ``--output`` whose replacement could delete anything but an earlier export.

    ``--overwrite`` replaces a directory only once the new export is complete, and only one
    that looks like an export (has ``config.json``) or is empty: a mistyped ``--output``
    (``.``, the project, a data folder) must never be emptied.
    """
    resolved = output.resolve()
    if resolved == Path.cwd().resolve() or resolved in Path.cwd().resolve().parents:
        raise ExportError(f"--output {output} is the working directory or holds it; name a new one")
    if not output.exists():
        return
    if not output.is_dir():
        raise ExportError(f"--output {output} exists and is not a directory")
    if not overwrite:
        raise ExportError(f"{output} exists; pass --overwrite to replace it")
    if os.listdir(output) and not (output / "config.json").exists():
        raise ExportError(
            f"--output {output} holds files but no config.json, so it is not an earlier export; "
            "it is never replaced, even with --overwrite"
        )
