"""Fine-tuning KoBART for Korean news summarization in JAX/Flax."""

__all__ = ["FlaxBartForConditionalGeneration"]


def __getattr__(name: str):
    # Imported lazily so that light modules (config, data_io) stay free of jax/transformers.
    if name == "FlaxBartForConditionalGeneration":
        from kobart_flax.pretrained import FlaxBartForConditionalGeneration

        return FlaxBartForConditionalGeneration
    raise AttributeError(f"module 'kobart_flax' has no attribute {name!r}")
