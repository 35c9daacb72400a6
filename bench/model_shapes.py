"""The model sizes the benchmarks run, as transformers ``BartConfig``s.

Every size keeps KoBART's vocabulary (30,000), position table and special-token ids, so the
LM head and the softmax over the vocabulary, a large part of a summarizer's cost, are
real-sized even in the small model.
"""

from transformers import BartConfig

# name: (d_model, layers per stack, attention heads, FFN width)
SHAPES = {
    # For counting compilations: the count depends on batch shapes, not on the model size.
    "tiny": (128, 2, 4, 512),
    # The CPU-sized model: 6 layers (3 encoder + 3 decoder), d_model 256.
    "small": (256, 3, 4, 1024),
    # gogamza/kobart-base-v1: 124M parameters.
    "base": (768, 6, 16, 3072),
}

VOCAB_SIZE = 30000
BOS, EOS, USR, PAD = 0, 1, 2, 3
DECODER_START = EOS  # KoBART's decoder starts from </s>


def bart_config(name: str) -> BartConfig:
    d_model, layers, heads, ffn = SHAPES[name]
    return BartConfig(
        vocab_size=VOCAB_SIZE,
        d_model=d_model,
        encoder_layers=layers,
        decoder_layers=layers,
        encoder_attention_heads=heads,
        decoder_attention_heads=heads,
        encoder_ffn_dim=ffn,
        decoder_ffn_dim=ffn,
        max_position_embeddings=1026,
        dropout=0.1,  # KoBART's dropout; both frameworks train with it on
        attention_dropout=0.0,
        activation_function="gelu",
        scale_embedding=False,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
        decoder_start_token_id=DECODER_START,
        forced_eos_token_id=EOS,
    )
