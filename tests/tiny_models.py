"""A tiny KoBART-shaped model over the bundled sample tokenizer, shared by several tests."""

from pathlib import Path

from transformers import BartConfig

from kobart_flax import FlaxBartForConditionalGeneration
from kobart_flax.tokenization import load_tokenizer

SAMPLE_TOKENIZER = Path(__file__).resolve().parent.parent / "data" / "sample" / "tokenizer"


def tiny_kobart_config(vocab_size: int, **overrides) -> BartConfig:
    """1+1 layers, d_model 32, KoBART's special ids and position table; ``overrides`` are
    further ``BartConfig`` fields."""
    return BartConfig(
        vocab_size=vocab_size,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=1026,
        init_std=0.2,  # large enough that outputs depend on the input
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=3,
        decoder_start_token_id=1,
        forced_eos_token_id=1,
        **overrides,
    )


def save_tiny_model(directory: Path) -> Path:
    """A random tiny model plus the sample tokenizer, saved as a model directory."""
    tokenizer = load_tokenizer(str(SAMPLE_TOKENIZER))
    model = FlaxBartForConditionalGeneration(tiny_kobart_config(len(tokenizer)), seed=3)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
