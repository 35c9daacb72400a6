"""One process of test_sharded_generation's multi-device runs, started with its own device count.

Generates summaries of a few sample articles once on this process's first device (no mesh), then
over each mesh that the devices of all processes take, and writes every token to a JSON file:
``{"reference": [[...], ...], "meshes": {"2x2x2": [[...], ...], ...}}``. With
``--coordinator``, it first joins the other processes, as a pod's hosts do.
"""

import argparse
import json
import sys
from pathlib import Path

import jax
from tiny_models import SAMPLE, SAMPLE_TOKENIZER, tiny_kobart_config

from kobart_flax import FlaxBartForConditionalGeneration, sharding
from kobart_flax.summarize import Summarizer
from kobart_flax.tokenization import load_tokenizer

# Seven articles in batches of 3, rounded up to the batch shards: the last batch is padding.
ARTICLES = 7
BATCH_SIZE = 3
# data x fsdp x tensor, by device count: data parallel, and params split by FSDP and tensor
# parallelism (with fsdp across the hosts of a pod).
MESHES = {
    4: ((4, 1, 1), (1, 2, 2)),
    8: ((8, 1, 1), (2, 2, 2)),
}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--coordinator")
    parser.add_argument("--num-processes", type=int, default=1)
    parser.add_argument("--process-id", type=int, default=0)
    args = parser.parse_args(argv)
    if args.coordinator:
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)

    tokenizer = load_tokenizer(str(SAMPLE_TOKENIZER))
    model = FlaxBartForConditionalGeneration(tiny_kobart_config(len(tokenizer)), seed=3)
    lines = (SAMPLE / "test.tsv").read_text(encoding="utf-8").splitlines()[1 : ARTICLES + 1]
    texts = [line.split("\t")[0] for line in lines]
    settings = model.generation_settings(num_beams=2, max_length=10)

    def tokens(mesh):
        summarizer = Summarizer(
            model.module,
            tokenizer,
            settings,
            batch_size=BATCH_SIZE,
            max_source_length=64,
            source_buckets=(64,),
            mesh=mesh,
        )
        return summarizer.generate_tokens(model.params, texts).tolist()

    result = {"reference": tokens(None), "meshes": {}}
    for shape in MESHES[jax.device_count()]:
        mesh = sharding.make_mesh(dict(zip(("data", "fsdp", "tensor"), shape, strict=True)))
        result["meshes"]["x".join(map(str, shape))] = tokens(mesh)
    Path(args.out).write_text(json.dumps(result), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
