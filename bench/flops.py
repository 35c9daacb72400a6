"""Model FLOPs of a BART train step, and the FLOP/s a large matrix multiply reaches.

MFU = (model FLOPs of a step / step time) / (FLOP/s of a large matmul on the same device).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import torch
from transformers import BartConfig


def forward_flops(config: BartConfig, batch: int, source_len: int, target_len: int) -> float:
    """Multiply-add FLOPs (2 per MAC) of one forward pass at the given padded shapes.

    Every matmul of the model: projections, FFNs, attention scores and sums, and the LM
    head. Attention counts the full square as both frameworks compute it (the causal half
    is masked, not skipped). Embedding lookups, norms and softmaxes are left out.
    """
    d, s, t = config.d_model, source_len, target_len
    encoder_layer = 2 * s * (4 * d * d + 2 * d * config.encoder_ffn_dim) + 2 * 2 * s * s * d
    decoder_layer = (
        2 * t * (4 * d * d + 2 * d * config.decoder_ffn_dim)  # self-attention projections, FFN
        + 2 * t * 2 * d * d  # cross-attention query and output projections
        + 2 * s * 2 * d * d  # cross-attention keys and values: from the source tokens
        + 2 * 2 * t * t * d  # self-attention scores and weighted sum
        + 2 * 2 * t * s * d  # cross-attention scores and weighted sum
    )
    lm_head = 2 * t * d * config.vocab_size
    per_example = (
        config.encoder_layers * encoder_layer + config.decoder_layers * decoder_layer + lm_head
    )
    return float(batch * per_example)


def train_flops(config: BartConfig, batch: int, source_len: int, target_len: int) -> float:
    """Forward plus backward (twice the forward: gradients of inputs and of weights)."""
    return 3 * forward_flops(config, batch, source_len, target_len)


def matmul_flops(size: int) -> float:
    return 2.0 * size**3


def jax_matmul(size: int, dtype: str) -> Callable[[], object]:
    """A [size, size] @ [size, size] product in jax on its default device, compiled; waits."""
    keys = jax.random.split(jax.random.key(0))
    a, b = (jax.random.normal(key, (size, size), jnp.dtype(dtype)) for key in keys)
    product = jax.jit(jnp.matmul)

    def run():
        return product(a, b).block_until_ready()

    run()
    return run


def torch_matmul(size: int, dtype: str, device: torch.device) -> Callable[[], object]:
    """The same product in torch (oneDNN/MKL on CPU, cuBLAS on GPU); waits."""
    generator = torch.Generator().manual_seed(0)
    a, b = (
        torch.randn(size, size, generator=generator).to(device=device, dtype=getattr(torch, dtype))
        for _ in range(2)
    )

    def run():
        product = torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return product

    run()
    return run


def xla_flops(cost_analysis) -> float:
    """The 'flops' entry of ``Compiled.cost_analysis()`` (a dict, or a list of one per module)."""
    if isinstance(cost_analysis, list | tuple):
        return float(sum(entry.get("flops", 0.0) for entry in cost_analysis))
    return float(cost_analysis.get("flops", 0.0))
