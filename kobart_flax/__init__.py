"""Fine-tuning KoBART for Korean news summarization in JAX/Flax."""
