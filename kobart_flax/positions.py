"""BART's position offset: the one definition, in a module without jax so config can use it.

BART's learned position table reserves its first two rows (a fairseq left-over: the padding
positions), so position p reads row p + 2 and a table of ``max_position_embeddings`` rows
holds ``max_position_embeddings - 2`` usable positions.
"""

POSITION_OFFSET = 2


def usable_positions(max_position_embeddings: int) -> int:
    """The most tokens one side (encoder or decoder) of such a model reads."""
    return max_position_embeddings - POSITION_OFFSET
