"""Run configuration: typed defaults, command-line overrides, validation.

A config is a Python file with a `get_config()` that returns a `Config` (the big_vision
convention), so a config can compute values (`16 * 32`) and carry comments. Any field can
then be overridden on the command line as `section.field=value`.

This module must not import jax: `validate` runs before any device is touched, and the
tests for it should not pay for a jax import.
"""

import argparse
import dataclasses
import difflib
import importlib.util
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

# KoBART's learned position table is offset by 2 (a fairseq legacy), so a table of
# max_position_embeddings rows holds max_position_embeddings - 2 usable positions.
POSITION_OFFSET = 2
COMPUTE_DTYPES = ("float32", "bfloat16")
BAD_ROW_POLICIES = ("error", "skip")
BEST_MODES = ("min", "max")
# The device mesh's axes, outermost first; MeshConfig has a size for each.
MESH_AXES = ("data", "fsdp", "tensor")
ROUGE_TOKENIZATIONS = ("mecab", "whitespace", "character")  # see kobart_flax.metrics
SPECIAL_TOKEN_ROLES = ("bos", "eos", "pad", "unk")  # the names model.special_tokens takes


class ConfigError(ValueError):
    """A config value that cannot be parsed or would break the run; the message names it."""


@dataclass
class ModelConfig:
    # HF hub name or local dir with HF BART weights; None = random init from the fields below.
    pretrained: str | None = None
    tokenizer: str = "data/sample/tokenizer"  # HF hub name or local dir
    vocab_size: int = 4000  # used only when pretrained is None
    d_model: int = 128
    encoder_layers: int = 2
    decoder_layers: int = 2
    attention_heads: int = 4
    ffn_dim: int = 512
    max_position_embeddings: int = 1026  # KoBART: 1024 usable positions + offset 2
    dropout: float = 0.1
    attention_dropout: float = 0.0
    dtype: str = "float32"  # compute dtype: "float32" | "bfloat16"; params stay float32
    # The tokenizer's special tokens, as "bos=<s>,eos=</s>,pad=<pad>,unk=<unk>" (any subset):
    # for mirrors that ship an empty special_tokens_map.json. "" = the tokenizer's own, and
    # KoBART's tokens (with a warning) for those it lacks (kobart_flax.tokenization).
    special_tokens: str = ""


@dataclass
class DataConfig:
    train_path: str = "data/sample/train.tsv"
    eval_path: str = "data/sample/test.tsv"
    max_source_length: int = 512
    max_target_length: int = 128
    # Sequences are padded up to the smallest bucket that fits, so jit compiles one
    # program per bucket instead of one per length.
    source_buckets: tuple[int, ...] = (64, 128, 256, 512)
    target_buckets: tuple[int, ...] = (32, 64, 128)
    bad_rows: str = "error"  # "error" | "skip"
    # Columns of a datasets source (.parquet/.arrow/.csv, save_to_disk dir, hf://datasets/...);
    # TSV and JSONL files always say news/summary.
    text_column: str = "news"
    summary_column: str = "summary"
    # Tokenized examples are cached on disk (kobart_flax.token_cache), so a restart skips
    # tokenization; "" puts the cache in <train.workdir>/token_cache.
    token_cache: bool = True
    cache_dir: str = ""
    prefetch: int = 2  # batches prepared ahead of the device; 0 = none
    # Training rows hold several examples, packed into packed_source_length /
    # packed_target_length tokens (kobart_flax.packing); train.batch_size then counts rows.
    # Evaluation stays bucketed. Off by default: packed attention spans the whole row
    # (other segments are masked, not skipped), see docs/PERFORMANCE.md.
    packing: bool = False
    packed_source_length: int = 1024
    packed_target_length: int = 128


@dataclass
class TrainConfig:
    workdir: str = "runs/tiny"
    seed: int = 0
    batch_size: int = 32  # GLOBAL batch (all devices, all hosts), per optimizer step
    grad_accum_steps: int = 1  # batch_size is split into this many micro-batches
    num_epochs: int = 3
    max_steps: int = 0  # > 0 stops early at this step
    learning_rate: float = 3e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    label_smoothing: float = 0.0
    # PyTorch BART keeps final_logits_bias as a buffer, so the original recipe never
    # trained it; frozen, it also costs no [tokens, vocab] gradient reduction per step.
    freeze_final_logits_bias: bool = True
    eval_every: int = 200  # steps; 0 = only at the end
    eval_max_batches: int = 0  # 0 = whole eval set
    log_every: int = 20
    # Checkpoints go to <workdir>/checkpoints; rerunning the same command resumes from there.
    checkpoint_every: int = 200  # steps; 0 = only at the end (and on preemption)
    keep_checkpoints: int = 2  # the newest K are kept (resume needs at least 1)
    # The best K by best_metric are kept as well; with keep_best > 0 every evaluation step
    # is also a checkpoint step, so each evaluated model can compete. 0 = off.
    keep_best: int = 1
    best_metric: str = "eval_loss"  # a metric the evaluation reports
    best_mode: str = "min"  # "min" (losses) | "max" (ROUGE)
    # Params-only warm start from another run's checkpoint directory (its newest step) or
    # one step directory in it; used only when <workdir>/checkpoints has nothing to resume.
    init_checkpoint: str | None = None
    # ROUGE of generated summaries, at the evaluations whose step is a multiple of this
    # (and at the end); 0 = off. Reported as rouge1 / rouge2 / rougeL (F1, mean over examples).
    rouge_every: int = 0
    rouge_examples: int = 0  # the first N eval examples; 0 = all
    rouge_tokenization: str = "mecab"  # "mecab" (the Dacon metric) | "whitespace" | "character"
    # Stop after this many evaluations without a better best_metric; 0 = never.
    early_stopping_patience: int = 0
    # With checkpoints in <workdir>/checkpoints but none readable, a run stops with an error
    # naming them; true moves them to checkpoints/corrupted/ and starts over from step 0.
    restart_if_unreadable: bool = False
    # A jax.profiler trace of profile_steps steps from step profile_start (1-based; later than
    # the first steps, which compile) into <workdir>/tensorboard/plugins/profile; 0 = off.
    profile_steps: int = 0
    profile_start: int = 3
    # JAX's persistent compilation cache, so a resumed run skips its compiles: "" =
    # <workdir>/compile_cache, "none" = off, else a directory (local or gs://; a pod's hosts
    # may share one).
    compile_cache_dir: str = ""


@dataclass
class DecodingConfig:
    """How summaries are generated: ROUGE during training, and the exported defaults."""

    num_beams: int = 4  # the original project decoded with beam 4-5
    max_length: int = 128  # summary tokens + the start token
    min_length: int = 0
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    batch_size: int = 32  # articles per generate call


@dataclass
class MeshConfig:
    """The device mesh (kobart_flax.sharding): data x fsdp x tensor = the device count.

    data: replicated params, split batch. fsdp: split batch, and params and optimizer state
    split too (gathered per layer). tensor: attention heads, FFN and vocabulary split inside
    each layer; innermost, so within a host. One size may be -1: it takes the rest.
    """

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    # The topology the config was written for, checked at start-up; 0 = any.
    expected_processes: int = 0
    expected_devices: int = 0


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)


def _section_names() -> list[str]:
    return [section.name for section in dataclasses.fields(Config)]


def _field_types(section_class: type) -> dict[str, typing.Any]:
    # get_type_hints resolves annotations even if a module turns them into strings.
    return typing.get_type_hints(section_class)


def _section_class(section_name: str) -> type:
    return _field_types(Config)[section_name]


# ---------------------------------------------------------------------------------------
# Loading


def load_config(path: str) -> Config:
    """Imports the Python file at `path` and returns what its `get_config()` returns."""
    config_path = Path(path)
    if not config_path.is_file():
        raise ConfigError(f"config file not found: {path}")
    spec = importlib.util.spec_from_file_location(f"_kobart_config_{config_path.stem}", path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot import config file {path} (is it a .py file?)")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise ConfigError(f"config file {path} must define get_config()")
    config = get_config()
    if not isinstance(config, Config):
        raise ConfigError(
            f"get_config() in {path} returned {type(config).__name__}, expected "
            "kobart_flax.config.Config"
        )
    return config


# ---------------------------------------------------------------------------------------
# Command-line overrides


def _did_you_mean(name: str, candidates: list[str], prefix: str = "") -> str:
    matches = difflib.get_close_matches(name, candidates, n=1)
    return f"; did you mean {prefix + matches[0]!r}?" if matches else ""


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise ValueError


def parse_value(text: str, annotation: typing.Any, field_name: str) -> typing.Any:
    """Turns the text of an override into a value of the field's annotated type."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)

    if origin in (typing.Union, types.UnionType) and type(None) in args:
        if text.strip().lower() in ("none", "null"):
            return None
        (inner,) = (arg for arg in args if arg is not type(None))
        return parse_value(text, inner, field_name)

    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        items = [item.strip() for item in text.split(",") if item.strip()]
        try:
            return tuple(args[0](item) for item in items)
        except ValueError:
            raise ConfigError(
                f"{field_name}: expected comma-separated {args[0].__name__}s "
                f"like '64,128,256', got {text!r}"
            ) from None

    parsers = {bool: _parse_bool, int: int, float: float, str: str}
    if annotation not in parsers:
        raise ConfigError(f"{field_name}: overriding fields of type {annotation} is not supported")
    try:
        return parsers[annotation](text)
    except ValueError:
        raise ConfigError(f"{field_name}: expected {annotation.__name__}, got {text!r}") from None


def _split_override(override: str) -> tuple[str, str, str]:
    """'train.batch_size=64' -> ('train', 'batch_size', '64'), with helpful errors."""
    key, equals, value = override.partition("=")
    key = key.strip()
    if not equals:
        raise ConfigError(
            f"{key}: missing '=' in override {override!r}, expected section.field=value"
        )
    section_name, dot, field_name = key.partition(".")
    if not dot:
        # Someone wrote 'batch_size=64'; find the section that has this field.
        owners = [
            f"{name}.{key}"
            for name in _section_names()
            if key in _field_types(_section_class(name))
        ]
        hint = f"; did you mean {owners[0]!r}?" if owners else ""
        raise ConfigError(f"override {override!r}: expected section.field=value{hint}")
    if section_name not in _section_names():
        raise ConfigError(
            f"unknown config section {section_name!r} in override {override!r}"
            + _did_you_mean(section_name, _section_names())
        )
    known_fields = list(_field_types(_section_class(section_name)))
    if field_name not in known_fields:
        raise ConfigError(
            f"unknown config field {key!r}"
            + _did_you_mean(field_name, known_fields, prefix=f"{section_name}.")
        )
    return section_name, field_name, value


def apply_overrides(config: Config, overrides: list[str]) -> Config:
    """Returns a copy of `config` with each `section.field=value` override applied in order."""
    for override in overrides:
        section_name, field_name, text = _split_override(override)
        section = getattr(config, section_name)
        annotation = _field_types(type(section))[field_name]
        value = parse_value(text, annotation, f"{section_name}.{field_name}")
        # replace() builds new section objects, so the caller's config is never mutated.
        config = dataclasses.replace(
            config, **{section_name: dataclasses.replace(section, **{field_name: value})}
        )
    return config


# ---------------------------------------------------------------------------------------
# Mesh


def mesh_axis_sizes(mesh: MeshConfig, device_count: int | None) -> dict[str, int]:
    """{"data": .., "fsdp": .., "tensor": ..} on ``device_count`` devices (-1 takes the rest).

    Without a device count, only checks the sizes and leaves a -1 as it is.
    """
    sizes = {name: getattr(mesh, name) for name in MESH_AXES}
    described = " x ".join(f"mesh.{name}={size}" for name, size in sizes.items())
    if any(size == 0 or size < -1 for size in sizes.values()):
        raise ConfigError(f"{described}: each size must be positive, or -1 for the rest")
    filled = [name for name, size in sizes.items() if size == -1]
    if len(filled) > 1:
        raise ConfigError(f"{described}: at most one size may be -1")
    if device_count is None:
        return sizes
    fixed = math.prod(size for size in sizes.values() if size != -1)
    if device_count % fixed or (not filled and fixed != device_count):
        raise ConfigError(f"{described} does not fit {device_count} devices")
    for name in filled:
        sizes[name] = device_count // fixed
    return sizes


# ---------------------------------------------------------------------------------------
# Validation


def _has_type(value: typing.Any, annotation: typing.Any) -> bool:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, arg) for arg in args)
    if origin is tuple:
        return isinstance(value, tuple) and all(_has_type(item, args[0]) for item in value)
    if annotation is type(None):
        return value is None
    if annotation is float:
        # An int is a fine float (learning_rate=1), but True is not a number here.
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, annotation)


def _check_types(config: Config, problems: list[str]) -> None:
    """Catches config files that compute a float where an int belongs (`512 / 2`), and NaN."""
    for section_name in _section_names():
        section = getattr(config, section_name)
        for name, annotation in _field_types(type(section)).items():
            value = getattr(section, name)
            if not _has_type(value, annotation):
                problems.append(
                    f"{section_name}.{name}={value!r}: expected {_type_name(annotation)}"
                )
            elif isinstance(value, float) and not math.isfinite(value):
                # Every range check compares NaN as False, so NaN would pass them all and
                # train to a NaN model; no field means anything at infinity either.
                problems.append(f"{section_name}.{name}={value!r}: must be a finite number")


def _type_name(annotation: typing.Any) -> str:
    return annotation.__name__ if isinstance(annotation, type) else str(annotation)


def _check_buckets(
    problems: list[str], name: str, buckets: tuple[int, ...], max_length: int, max_positions: int
) -> None:
    if not buckets:
        problems.append(f"{name}: needs at least one bucket")
        return
    if any(b <= 0 for b in buckets):
        problems.append(f"{name}={buckets}: bucket sizes must be positive")
    if any(a >= b for a, b in zip(buckets, buckets[1:], strict=False)):
        problems.append(f"{name}={buckets}: buckets must be strictly increasing")
    if buckets[-1] < max_length:
        problems.append(
            f"{name}={buckets}: largest bucket {buckets[-1]} is smaller than the max length "
            f"{max_length}, so the longest sequences would fit no bucket"
        )
    if buckets[-1] > max_positions:
        # Padding positions still index the position table, so a bucket past it crashes.
        problems.append(
            f"{name}={buckets}: largest bucket {buckets[-1]} exceeds the {max_positions} "
            "positions of the model"
        )


def _check_model(model: ModelConfig, problems: list[str]) -> None:
    for name in (
        "vocab_size",
        "d_model",
        "encoder_layers",
        "decoder_layers",
        "attention_heads",
        "ffn_dim",
    ):
        if getattr(model, name) <= 0:
            problems.append(f"model.{name}={getattr(model, name)}: must be positive")
    if model.max_position_embeddings <= POSITION_OFFSET:
        problems.append(
            f"model.max_position_embeddings={model.max_position_embeddings}: must exceed the "
            f"position offset {POSITION_OFFSET}"
        )
    for name in ("dropout", "attention_dropout"):
        rate = getattr(model, name)
        if not 0.0 <= rate < 1.0:
            problems.append(f"model.{name}={rate}: must be in [0, 1)")
    if model.dtype not in COMPUTE_DTYPES:
        problems.append(f"model.dtype={model.dtype!r}: must be one of {COMPUTE_DTYPES}")
    try:
        parse_special_tokens(model.special_tokens)
    except ConfigError as error:
        problems.append(str(error))
    if model.attention_heads > 0 and model.d_model % model.attention_heads != 0:
        problems.append(
            f"model.d_model={model.d_model}: not divisible by "
            f"model.attention_heads={model.attention_heads}"
        )


def parse_special_tokens(text: str) -> dict[str, str]:
    """``"bos=<s>,eos=</s>"`` -> ``{"bos": "<s>", "eos": "</s>"}`` (model.special_tokens)."""
    tokens: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        role, equals, token = (part.strip() for part in item.partition("="))
        if not equals or role not in SPECIAL_TOKEN_ROLES or not token or role in tokens:
            raise ConfigError(
                f"model.special_tokens={text!r}: expected role=token pairs separated by commas, "
                f"each role once, roles {', '.join(SPECIAL_TOKEN_ROLES)} (e.g. 'bos=<s>,eos=</s>')"
            )
        tokens[role] = token
    return tokens


def check_positions(data: DataConfig, max_position_embeddings: int, model_name: str) -> None:
    """One-line ConfigError when data lengths or buckets exceed the positions of a model
    whose size is known only at run time (``model.pretrained``, a checkpoint)."""
    usable = max_position_embeddings - POSITION_OFFSET
    too_long = [
        f"{name}={value}"
        for name, value in (
            ("data.max_source_length", data.max_source_length),
            ("data.max_target_length", data.max_target_length),
            ("data.source_buckets", max(data.source_buckets)),
            ("data.target_buckets", max(data.target_buckets)),
        )
        if value > usable
    ]
    if too_long:
        raise ConfigError(
            f"{', '.join(too_long)} exceed the {usable} positions of {model_name} "
            f"(max_position_embeddings={max_position_embeddings} minus offset {POSITION_OFFSET})"
        )


def _check_data(data: DataConfig, max_positions: int, problems: list[str]) -> None:
    for name in ("max_source_length", "max_target_length"):
        length = getattr(data, name)
        if length <= 0:
            problems.append(f"data.{name}={length}: must be positive")
        elif length > max_positions:
            problems.append(
                f"data.{name}={length}: exceeds the {max_positions} usable positions "
                f"(model.max_position_embeddings minus offset {POSITION_OFFSET})"
            )
    _check_buckets(
        problems, "data.source_buckets", data.source_buckets, data.max_source_length, max_positions
    )
    _check_buckets(
        problems, "data.target_buckets", data.target_buckets, data.max_target_length, max_positions
    )
    if data.bad_rows not in BAD_ROW_POLICIES:
        problems.append(f"data.bad_rows={data.bad_rows!r}: must be one of {BAD_ROW_POLICIES}")
    if data.prefetch < 0:
        problems.append(f"data.prefetch={data.prefetch}: must be >= 0")
    for name in ("text_column", "summary_column"):
        if not getattr(data, name).strip():
            problems.append(f"data.{name} is empty: name a column of the data")
    if data.packing:
        # Every example must fit a row alone; positions restart per segment, so rows may
        # be longer than the position table.
        for row_side, longest in (("source", "max_source_length"), ("target", "max_target_length")):
            row_length = getattr(data, f"packed_{row_side}_length")
            if row_length < getattr(data, longest):
                problems.append(
                    f"data.packed_{row_side}_length={row_length}: shorter than "
                    f"data.{longest}={getattr(data, longest)}, so long examples would not fit"
                )


def _check_train(
    train: TrainConfig,
    device_count: int | None,
    process_count: int,
    problems: list[str],
    batch_shards: int | None = None,
) -> None:
    if not train.workdir:
        problems.append("train.workdir: must not be empty")
    for name in (
        "batch_size",
        "grad_accum_steps",
        "num_epochs",
        "learning_rate",
        "max_grad_norm",
        "log_every",
    ):
        if getattr(train, name) <= 0:
            problems.append(f"train.{name}={getattr(train, name)}: must be positive")
    for name in (
        "max_steps",
        "weight_decay",
        "eval_every",
        "eval_max_batches",
        "checkpoint_every",
        "keep_best",
        "rouge_every",
        "rouge_examples",
        "early_stopping_patience",
        "profile_steps",
    ):
        if getattr(train, name) < 0:
            problems.append(f"train.{name}={getattr(train, name)}: must be >= 0")
    if train.keep_checkpoints < 1:
        problems.append(
            f"train.keep_checkpoints={train.keep_checkpoints}: must be >= 1 "
            "(the newest checkpoint is what a restarted run resumes from)"
        )
    if not train.best_metric:
        problems.append("train.best_metric: must not be empty")
    if train.best_mode not in BEST_MODES:
        problems.append(f"train.best_mode={train.best_mode!r}: must be one of {BEST_MODES}")
    if train.rouge_tokenization not in ROUGE_TOKENIZATIONS:
        problems.append(
            f"train.rouge_tokenization={train.rouge_tokenization!r}: must be one of "
            f"{ROUGE_TOKENIZATIONS}"
        )
    if train.early_stopping_patience and not train.eval_every:
        problems.append(
            "train.early_stopping_patience: needs train.eval_every > 0 (it counts evaluations)"
        )
    if train.profile_start < 1:
        problems.append(
            f"train.profile_start={train.profile_start}: must be >= 1 (steps count from 1)"
        )
    if train.init_checkpoint is not None and not train.init_checkpoint.strip():
        problems.append("train.init_checkpoint: must be None or a checkpoint directory")
    if not 0.0 <= train.warmup_ratio <= 1.0:
        problems.append(f"train.warmup_ratio={train.warmup_ratio}: must be in [0, 1]")
    if not 0.0 <= train.label_smoothing < 1.0:
        problems.append(f"train.label_smoothing={train.label_smoothing}: must be in [0, 1)")

    if train.batch_size <= 0 or train.grad_accum_steps <= 0:
        return  # the divisibility checks below are meaningless and already reported
    if train.batch_size % train.grad_accum_steps != 0:
        problems.append(
            f"train.batch_size={train.batch_size}: not divisible by "
            f"train.grad_accum_steps={train.grad_accum_steps}"
        )
        return
    micro_batch = train.batch_size // train.grad_accum_steps
    # Each micro-batch is split over the batch shards (mesh.data x mesh.fsdp): one per
    # device, unless tensor parallelism makes a group of devices share one.
    shards = device_count if batch_shards is None else batch_shards
    if shards is not None and micro_batch % shards != 0:
        over = (
            f"{shards} devices"
            if shards == device_count
            else f"{shards} batch shards (mesh.data x mesh.fsdp)"
        )
        problems.append(
            f"train.batch_size={train.batch_size} with grad_accum_steps="
            f"{train.grad_accum_steps} gives {micro_batch} examples per micro-batch, "
            f"not divisible by {over}"
        )
    # Each host reads an equal slice of the global batch.
    if train.batch_size % process_count != 0:
        problems.append(
            f"train.batch_size={train.batch_size}: not divisible by {process_count} processes"
        )


def validate(config: Config, device_count: int | None = None, process_count: int = 1) -> None:
    """Raises ConfigError listing every field that would break the run.

    Meant to run before anything is compiled, so a typo fails in a second, not after the
    first XLA compile on a pod. Pass `device_count` (jax.device_count()) and
    `process_count` (jax.process_count()) to also check that batches shard evenly.
    """
    if device_count is not None and device_count <= 0:
        raise ValueError(f"device_count must be positive, got {device_count}")
    if process_count <= 0:
        raise ValueError(f"process_count must be positive, got {process_count}")
    problems: list[str] = []
    _check_types(config, problems)
    # The range checks below would crash or mislead on values of the wrong type.
    _raise_if_any(problems)
    max_positions = config.model.max_position_embeddings - POSITION_OFFSET
    _check_model(config.model, problems)
    _check_data(config.data, max_positions, problems)
    batch_shards = _check_mesh(config.mesh, config.model, device_count, problems)
    _check_train(config.train, device_count, process_count, problems, batch_shards)
    _check_decoding(config.decoding, problems)
    _raise_if_any(problems)


def _check_mesh(
    mesh: MeshConfig, model: ModelConfig, device_count: int | None, problems: list[str]
) -> int | None:
    """Checks the mesh against the model and devices; returns mesh.data x mesh.fsdp if known."""
    for name in ("expected_processes", "expected_devices"):
        if getattr(mesh, name) < 0:
            problems.append(f"mesh.{name}={getattr(mesh, name)}: must be >= 0 (0 = any)")
    if mesh.tensor > 1:
        # Tensor parallelism splits whole heads, FFN columns and vocabulary rows.
        for name in ("attention_heads", "ffn_dim", "vocab_size"):
            if getattr(model, name) % mesh.tensor:
                problems.append(
                    f"mesh.tensor={mesh.tensor}: does not divide model.{name}="
                    f"{getattr(model, name)}"
                )
    try:
        sizes = mesh_axis_sizes(mesh, device_count)
    except ConfigError as error:
        problems.append(str(error))
        return None
    return None if device_count is None else sizes["data"] * sizes["fsdp"]


def _check_decoding(decoding: DecodingConfig, problems: list[str]) -> None:
    for name in ("num_beams", "batch_size"):
        if getattr(decoding, name) <= 0:
            problems.append(f"decoding.{name}={getattr(decoding, name)}: must be positive")
    for name in ("min_length", "no_repeat_ngram_size"):
        if getattr(decoding, name) < 0:
            problems.append(f"decoding.{name}={getattr(decoding, name)}: must be >= 0")
    if decoding.max_length < 2:
        problems.append(
            f"decoding.max_length={decoding.max_length}: must be >= 2 (start token + one)"
        )


def _raise_if_any(problems: list[str]) -> None:
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))


# ---------------------------------------------------------------------------------------
# Serialisation (checkpoints, TensorBoard)


def config_to_dict(config: Config) -> dict[str, dict[str, typing.Any]]:
    """A JSON-serialisable dict; tuples become lists so json round trips are exact."""
    return {
        section_name: {
            name: list(value) if isinstance(value, tuple) else value
            for name, value in dataclasses.asdict(getattr(config, section_name)).items()
        }
        for section_name in _section_names()
    }


def config_from_dict(config_dict: dict[str, dict[str, typing.Any]]) -> Config:
    """Inverse of config_to_dict. Fields missing from the dict keep their defaults, so
    configs saved before a field was added still load; unknown names are an error."""
    unknown_sections = set(config_dict) - set(_section_names())
    if unknown_sections:
        raise ConfigError(f"unknown config sections: {sorted(unknown_sections)}")
    sections = {}
    for section_name, section_values in config_dict.items():
        field_types = _field_types(_section_class(section_name))
        unknown_fields = set(section_values) - set(field_types)
        if unknown_fields:
            raise ConfigError(
                f"unknown config fields: {sorted(f'{section_name}.{f}' for f in unknown_fields)}"
            )
        values = {
            name: tuple(value) if typing.get_origin(field_types[name]) is tuple else value
            for name, value in section_values.items()
        }
        sections[section_name] = _section_class(section_name)(**values)
    return Config(**sections)


# ---------------------------------------------------------------------------------------
# Entry points


def parse_args(argv: list[str] | None = None) -> Config:
    """`--config PATH section.field=value ...` -> Config. Exits with a usage message on a
    bad config or override, like any other command-line error."""
    parser = argparse.ArgumentParser(
        description="Load a config file and apply section.field=value overrides.",
        epilog=(
            "example:\n  %(prog)s --config configs/kobart_base.py "
            "train.workdir=gs://my-bucket/run1 train.batch_size=256 data.source_buckets=128,256,512"
        ),
        # Keeps the example on one line, as it would be typed.
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", default="configs/tiny.py", help="Python file with get_config()")
    parser.add_argument(
        "overrides", nargs="*", metavar="section.field=value", help="config overrides"
    )
    args = parser.parse_args(argv)
    try:
        return apply_overrides(load_config(args.config), args.overrides)
    except ConfigError as error:
        parser.error(str(error))
