"""ROUGE of generated summaries during training, through the shared Summarizer."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np
from jax.sharding import Mesh

from kobart_flax import distributed
from kobart_flax.config import Config
from kobart_flax.data_io import Example
from kobart_flax.korean_rouge import ROUGE_TYPES, rouge_totals
from kobart_flax.pretrained import FlaxBartForConditionalGeneration
from kobart_flax.summarize import Summarizer

logger = logging.getLogger(__name__)

# What an evaluation reports under these names: the F1 of each ROUGE variant.
ROUGE_METRICS = {kind: f"{kind}_f" for kind in ROUGE_TYPES}


class RougeEvaluator:
    """Summarizes a fixed sample of the eval set and scores it against the references.

    Every device of the mesh generates a share of each batch of the sample, with the params
    as training shards them (see :class:`~kobart_flax.summarize.Summarizer`), so every host
    ends up with every summary. Each host then scores every ``process_count``-th one (Mecab
    is slow, and host work) and the ROUGE sums are added up over the hosts, so every host
    reports the metrics of the whole sample.
    """

    def __init__(
        self,
        model: FlaxBartForConditionalGeneration,
        tokenizer,
        config: Config,
        examples: Sequence[Example],
        mesh: Mesh,
        process_index: int = 0,
        process_count: int = 1,
    ):
        count = config.train.rouge_examples or len(examples)
        self.sample = list(examples[:count])
        # Strided rather than contiguous: the hosts score summaries of similar lengths.
        self.host_rows = slice(process_index, None, process_count)
        self.every = config.train.rouge_every
        self.tokenization = config.train.rouge_tokenization
        decoding = config.decoding
        settings = model.generation_settings(
            num_beams=decoding.num_beams,
            max_length=decoding.max_length,
            min_length=decoding.min_length,
            length_penalty=decoding.length_penalty,
            no_repeat_ngram_size=decoding.no_repeat_ngram_size,
        )
        self.summarizer = Summarizer(
            model.module,
            tokenizer,
            settings,
            batch_size=decoding.batch_size,
            max_source_length=config.data.max_source_length,
            source_buckets=config.data.source_buckets,
            mesh=mesh,
        )

    def due(self, step: int, total_steps: int) -> bool:
        return bool(self.every) and (step % self.every == 0 or step == total_steps)

    def __call__(self, params) -> dict[str, float]:
        """ROUGE of the sample; ``params`` in their training shardings. A collective: every
        host calls it at the same step."""
        started = time.perf_counter()
        predictions = self.summarizer.summarize(params, [e.news for e in self.sample])
        predictions = predictions[self.host_rows]
        references = [e.summary for e in self.sample[self.host_rows]]
        totals = rouge_totals(predictions, references, self.tokenization)
        sums = distributed.sum_over_processes(
            np.array([totals[key] for key in ROUGE_METRICS.values()])
        )
        logger.info(
            "ROUGE on %d eval examples (generated over %d devices, %d scored on this host) in "
            "%.1fs; e.g. %r",
            len(self.sample),
            self.summarizer.mesh.size,
            len(predictions),
            time.perf_counter() - started,
            predictions[0][:80] if predictions else "",
        )
        means = sums / len(self.sample)
        return {name: float(mean) for name, mean in zip(ROUGE_METRICS, means, strict=True)}
