"""The original PyTorch project's training step, rebuilt here as the baseline.

What the original (PyTorch Lightning + transformers) did per step, kept as it was:
``BartForConditionalGeneration``; every example padded to max_len 512, the decoder inputs
included (its dataset padded ``input_ids``, ``decoder_input_ids`` and ``labels``, the latter
with -100, to ``max_len``); masks from ``!= pad``; the loss transformers computes from
``labels``; ``torch.optim.AdamW`` (lr 3e-5, weight decay 0.01 off biases and LayerNorm);
a linear warmup/decay schedule; gradient clipping at 1.0. Current transformers runs its
default (SDPA) attention, a stronger baseline than the eager attention of its day.
"""

import contextlib

import numpy as np
import torch
from transformers import BartConfig, BartForConditionalGeneration, get_linear_schedule_with_warmup

from bench.report import usable_cores

IGNORE_INDEX = -100
LEARNING_RATE = 3e-5
WEIGHT_DECAY = 0.01
MAX_GRAD_NORM = 1.0
WARMUP_RATIO = 0.1


def use_all_cores() -> int:
    """torch's intra-op threads = the cores XLA's CPU client uses (all usable ones)."""
    torch.set_num_threads(usable_cores())
    return torch.get_num_threads()


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def batch_examples(batch: dict[str, np.ndarray]) -> list[tuple[np.ndarray, ...]]:
    """(source, decoder input, labels) of every example in a kobart-flax batch.

    A bucketed batch holds one example per row (its masks mark it); a packed batch
    (kobart_flax.packing) several, told apart by their segment ids.
    """
    source_segments = batch.get("segment_ids", batch["attention_mask"])
    target_segments = batch.get("decoder_segment_ids", batch["decoder_attention_mask"])
    examples = []
    for row in range(len(batch["input_ids"])):
        for segment in np.unique(source_segments[row][source_segments[row] > 0]):
            source = source_segments[row] == segment
            target = target_segments[row] == segment
            examples.append(
                (
                    batch["input_ids"][row][source],
                    batch["decoder_input_ids"][row][target],
                    batch["labels"][row][target],
                )
            )
    return examples


def pad_examples(
    examples: list[tuple[np.ndarray, ...]],
    source_len: int,
    target_len: int,
    pad_token_id: int,
    target_device: torch.device,
) -> dict[str, torch.Tensor]:
    """Examples as the original's tensors, one per row, padded to the lengths given.

    The original padded both sources and decoder inputs to its max_len (512).
    """
    rows = len(examples)
    input_ids = np.full((rows, source_len), pad_token_id, np.int64)
    decoder_input_ids = np.full((rows, target_len), pad_token_id, np.int64)
    labels = np.full((rows, target_len), IGNORE_INDEX, np.int64)
    for row, (source, decoder_input, target) in enumerate(examples):
        input_ids[row, : len(source)] = source
        decoder_input_ids[row, : len(decoder_input)] = decoder_input
        labels[row, : len(target)] = target
    tensors = {
        "input_ids": input_ids,
        "decoder_input_ids": decoder_input_ids,
        "labels": labels,
    }
    return {name: torch.from_numpy(array).to(target_device) for name, array in tensors.items()}


class Trainer:
    """Model, optimizer and schedule of the original recipe; ``step`` is one training step."""

    def __init__(
        self, config: BartConfig, total_steps: int, compute_dtype: str, seed: int = 0
    ) -> None:
        torch.manual_seed(seed)
        self.device = device()
        self.pad_token_id = config.pad_token_id
        self.model = BartForConditionalGeneration(config).to(self.device).train()
        self.optimizer = torch.optim.AdamW(
            parameter_groups(self.model), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY
        )
        self.scheduler = get_linear_schedule_with_warmup(
            self.optimizer, int(total_steps * WARMUP_RATIO), total_steps
        )
        # bfloat16 through autocast (float32 master weights), like the Flax side's bf16 compute.
        self.autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16)
            if compute_dtype == "bfloat16"
            else contextlib.nullcontext()
        )

    def step(self, batch: dict[str, torch.Tensor]) -> float:
        with self.autocast:
            loss = self.model(
                input_ids=batch["input_ids"],
                attention_mask=batch["input_ids"].ne(self.pad_token_id),
                decoder_input_ids=batch["decoder_input_ids"],
                decoder_attention_mask=batch["decoder_input_ids"].ne(self.pad_token_id),
                labels=batch["labels"],
            ).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), MAX_GRAD_NORM)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        # .item() waits for the device, so the step's time is all of its work.
        return loss.item()


def parameter_groups(model: torch.nn.Module) -> list[dict]:
    """Weight decay on weights only: biases and LayerNorm parameters take none."""
    no_decay = set()
    for module in model.modules():
        for name, parameter in module.named_parameters(recurse=False):
            if name == "bias" or isinstance(module, torch.nn.LayerNorm):
                no_decay.add(id(parameter))
    parameters = list(model.parameters())
    return [
        {"params": [p for p in parameters if id(p) not in no_decay]},
        {"params": [p for p in parameters if id(p) in no_decay], "weight_decay": 0.0},
    ]
