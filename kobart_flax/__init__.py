"""Fine-tuning KoBART for Korean news summarization in JAX/Flax."""

from kobart_flax.pretrained import FlaxBartForConditionalGeneration

__all__ = ["FlaxBartForConditionalGeneration"]
