"""A tiny KoBART-shaped model over the bundled sample tokenizer, and tiny training runs of it
on slices of the bundled data, shared by several tests."""

import subprocess
from pathlib import Path

import pytest
from transformers import BartConfig

from kobart_flax import FlaxBartForConditionalGeneration
from kobart_flax.config import Config
from kobart_flax.overrides import apply_overrides, load_config
from kobart_flax.tokenization import load_tokenizer

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "data" / "sample"
SAMPLE_TOKENIZER = SAMPLE / "tokenizer"

# configs/tiny.py shrunk to 1+1 layers of width 32 with one or two buckets: a step takes
# milliseconds, so an end-to-end run is dominated by start-up and compiles.
TINY_RUN_SHAPES = (
    f"model.tokenizer={SAMPLE_TOKENIZER}",
    "model.d_model=32",
    "model.ffn_dim=64",
    "model.encoder_layers=1",
    "model.decoder_layers=1",
    "data.max_source_length=128",
    "data.source_buckets=64,128",
    "data.max_target_length=32",
    "data.target_buckets=32",
    "train.batch_size=16",
)


def write_slice(source: Path, target: Path, rows: int) -> None:
    """The header and the first ``rows`` rows of a sample TSV."""
    lines = source.read_text(encoding="utf-8").splitlines(keepends=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("".join(lines[: rows + 1]), encoding="utf-8")


def write_tiny_data(directory: Path, train_rows: int, eval_rows: int) -> Path:
    """``directory``/train.tsv and test.tsv: the first rows of the sample's; returns
    ``directory``."""
    write_slice(SAMPLE / "train.tsv", directory / "train.tsv", train_rows)
    write_slice(SAMPLE / "test.tsv", directory / "test.tsv", eval_rows)
    return directory


def tiny_data_fixture(train_rows: int, eval_rows: int):
    """A module-scoped ``data_dir`` fixture: a folder of ``write_tiny_data``'s two files."""

    @pytest.fixture(scope="module")
    def data_dir(tmp_path_factory) -> Path:
        return write_tiny_data(tmp_path_factory.mktemp("data"), train_rows, eval_rows)

    return data_dir


def tiny_run_config(overrides: list[str]) -> Config:
    """configs/tiny.py with ``overrides``, as train_flax.py would load it."""
    return apply_overrides(load_config(str(REPO / "configs" / "tiny.py")), overrides)


def tiny_run_overrides(data: str | Path, workdir: str | Path, *extra: str) -> list[str]:
    """Overrides of configs/tiny.py for a tiny run on ``data``/{train,test}.tsv."""
    return [
        f"data.train_path={data}/train.tsv",
        f"data.eval_path={data}/test.tsv",
        f"train.workdir={workdir}",
        *TINY_RUN_SHAPES,
        *extra,
    ]


def tiny_bart_config(vocab_size: int, **overrides) -> BartConfig:
    """2+2 layers of width 32 with 4 heads, 64 positions and KoBART's special ids: small
    enough to compare with PyTorch quickly; ``overrides`` are further ``BartConfig`` fields."""
    fields = dict(
        vocab_size=vocab_size,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=48,
        decoder_ffn_dim=48,
        max_position_embeddings=64,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=3,
        decoder_start_token_id=1,
        forced_eos_token_id=1,
    )
    fields.update(overrides)
    return BartConfig(**fields)


def tiny_kobart_config(vocab_size: int, **overrides) -> BartConfig:
    """1+1 layers, d_model 32, KoBART's special ids and position table; ``overrides`` are
    further ``BartConfig`` fields."""
    kobart_shaped = dict(
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=1026,
        init_std=0.2,  # large enough that outputs depend on the input
    )
    return tiny_bart_config(vocab_size, **{**kobart_shaped, **overrides})


def save_tiny_model(directory: Path) -> Path:
    """A random tiny model plus the sample tokenizer, saved as a model directory."""
    tokenizer = load_tokenizer(str(SAMPLE_TOKENIZER))
    model = FlaxBartForConditionalGeneration(tiny_kobart_config(len(tokenizer)), seed=3)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def save_tiny_checkpoint(workdir: Path, step: int = 1) -> FlaxBartForConditionalGeneration:
    """A random tiny model saved as step ``step`` of ``workdir``/checkpoints, as training saves
    it (with the sample tokenizer beside the steps); returns the model."""
    import jax
    import optax

    from kobart_flax import checkpoint, steps
    from kobart_flax.config import TrainConfig

    tokenizer = load_tokenizer(str(SAMPLE_TOKENIZER))
    model = FlaxBartForConditionalGeneration(tiny_kobart_config(len(tokenizer)), seed=3)
    state = steps.create_train_state(model.params, optax.sgd(0.1), jax.random.key(0))
    directory = checkpoint.checkpoint_dir(workdir)
    with checkpoint.TrainCheckpointer(directory, TrainConfig()) as saver:
        saver.save_tokenizer(tokenizer)
        saver.save(
            step,
            state,
            data_iterator={},
            history={"train_losses": [], "evaluations": []},
            metadata={"model_config": model.config.to_dict()},
        )
    return model


def signal_at_line(
    command: list[str], env: dict[str, str], marker: str, signum: int, timeout: float
) -> tuple[subprocess.Popen, str]:
    """Runs ``command`` in the repository and sends it ``signum`` at the first line of its
    stderr that holds ``marker``; returns the process, finished, and its stderr."""
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    try:
        seen = []
        for line in process.stderr:
            seen.append(line)
            if marker in line:
                process.send_signal(signum)
                break
        _, rest = process.communicate(timeout=timeout)
    finally:
        process.kill()
    return process, "".join(seen) + rest
