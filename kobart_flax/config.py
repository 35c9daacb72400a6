"""Run configuration: the typed sections, each checking its own fields, and `validate`.

A config is a Python file with a `get_config()` that returns a `Config` (the big_vision
convention); :mod:`kobart_flax.overrides` loads one and applies `section.field=value`
overrides from the command line.

This module must not import jax: `validate` runs before any device is touched, and the
tests for it should not pay for a jax import.
"""

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field

from kobart_flax.data_io import BAD_ROW_POLICIES
from kobart_flax.korean_rouge import ROUGE_TYPES
from kobart_flax.korean_rouge import TOKENIZATIONS as ROUGE_TOKENIZATIONS
from kobart_flax.positions import POSITION_OFFSET, usable_positions
from kobart_flax.pretrained_config import read_pretrained_config

COMPUTE_DTYPES = ("float32", "bfloat16")
# model.attention: the kernels of kobart_flax.attention, and "auto" for the platform's choice.
ATTENTION_IMPLEMENTATIONS = ("auto", "xla", "cudnn", "splash")
BEST_MODES = ("min", "max")
# The device mesh's axes, outermost first; MeshConfig has a size for each.
MESH_AXES = ("data", "fsdp", "tensor")
SPECIAL_TOKEN_ROLES = ("bos", "eos", "pad", "unk")  # the names model.special_tokens takes
EVAL_LOSS = "eval_loss"  # what every evaluation reports; with ROUGE on, ROUGE_TYPES too
# ModelConfig's architecture fields, each by the key of a Hugging Face BART config.json.
ARCHITECTURE_KEYS = {
    "vocab_size": "vocab_size",
    "d_model": "d_model",
    "encoder_layers": "encoder_layers",
    "decoder_layers": "decoder_layers",
    "attention_heads": "encoder_attention_heads",
    "ffn_dim": "encoder_ffn_dim",
    "max_position_embeddings": "max_position_embeddings",
}


class ConfigError(ValueError):
    """A config value that cannot be parsed or would break the run; the message names it."""


@dataclass
class ModelConfig:
    # HF hub name or local dir with HF BART weights; None = random init from the fields below.
    pretrained: str | None = None
    tokenizer: str = "data/sample/tokenizer"  # HF hub name or local dir
    # The architecture of a random init. With `pretrained` set they are unused: the
    # checkpoint's config.json decides, and validation reads that (with_pretrained_architecture).
    vocab_size: int = 4000
    d_model: int = 128
    encoder_layers: int = 2
    decoder_layers: int = 2
    attention_heads: int = 4
    ffn_dim: int = 512
    max_position_embeddings: int = 1026  # KoBART: 1024 usable positions + offset 2
    dropout: float = 0.1
    attention_dropout: float = 0.0
    dtype: str = "float32"  # compute dtype: "float32" | "bfloat16"; params stay float32
    # The attention kernel (kobart_flax.attention): "auto" = cuDNN on a GPU in bfloat16,
    # splash on a TPU, xla elsewhere; "xla" | "cudnn" | "splash" to choose.
    attention: str = "auto"
    # The tokenizer's special tokens, as "bos=<s>,eos=</s>,pad=<pad>,unk=<unk>" (any subset):
    # for mirrors that ship an empty special_tokens_map.json. "" = the tokenizer's own, and
    # KoBART's tokens (with a warning) for those it lacks (kobart_flax.tokenization).
    special_tokens: str = ""

    def with_pretrained_architecture(self) -> "ModelConfig | None":
        """This section with the architecture fields of ``pretrained``'s config.json (itself
        without ``pretrained``); None when that file cannot be read here (a hub model not in
        the local cache), so the checks that need it wait for the loaded model."""
        if self.pretrained is None:
            return self
        try:
            found = read_pretrained_config(self.pretrained)
        except (OSError, ValueError) as error:
            raise ConfigError(f"model.pretrained={self.pretrained!r}: {error}") from None
        return None if found is None else self.with_architecture(found)

    def with_architecture(self, hf_config: typing.Mapping[str, typing.Any]) -> "ModelConfig":
        """This section with the architecture fields of a BART config.json's contents."""
        try:
            architecture = {name: int(hf_config[key]) for name, key in ARCHITECTURE_KEYS.items()}
        except (KeyError, TypeError, ValueError):
            keys = ", ".join(ARCHITECTURE_KEYS.values())
            raise ConfigError(f"{self.config_json()}: expected the BART keys {keys}") from None
        return dataclasses.replace(self, **architecture)

    def architecture_field(self, name: str) -> str:
        """What messages call an architecture field: the config's, or the checkpoint's."""
        if self.pretrained is None:
            return f"model.{name}"
        return f"{ARCHITECTURE_KEYS[name]} in {self.config_json()}"

    def positions_described(self) -> str:
        """The position table's size as messages name it."""
        if self.pretrained is None:
            return "model.max_position_embeddings"
        return f"max_position_embeddings={self.max_position_embeddings} in {self.config_json()}"

    def config_json(self) -> str:
        return f"{self.pretrained}/config.json"

    def problems(self) -> list[str]:
        """Problems of this section, the architecture fields taken for the model's own
        (without ``pretrained``, or after ``with_pretrained_architecture``)."""
        problems = self.setting_problems()
        for name in ARCHITECTURE_KEYS:
            if name != "max_position_embeddings" and getattr(self, name) <= 0:
                problems.append(
                    f"{self.architecture_field(name)}={getattr(self, name)}: must be positive"
                )
        if self.max_position_embeddings <= POSITION_OFFSET:
            problems.append(
                f"{self.architecture_field('max_position_embeddings')}="
                f"{self.max_position_embeddings}: must exceed the position offset {POSITION_OFFSET}"
            )
        if self.attention_heads > 0 and self.d_model % self.attention_heads != 0:
            problems.append(
                f"{self.architecture_field('d_model')}={self.d_model}: not divisible by "
                f"{self.architecture_field('attention_heads')}={self.attention_heads}"
            )
        return problems

    def setting_problems(self) -> list[str]:
        """Problems of the fields that are this run's choice whatever the architecture."""
        problems = []
        for name in ("dropout", "attention_dropout"):
            rate = getattr(self, name)
            if not 0.0 <= rate < 1.0:
                problems.append(f"model.{name}={rate}: must be in [0, 1)")
        if self.dtype not in COMPUTE_DTYPES:
            problems.append(f"model.dtype={self.dtype!r}: must be one of {COMPUTE_DTYPES}")
        if self.attention not in ATTENTION_IMPLEMENTATIONS:
            problems.append(
                f"model.attention={self.attention!r}: must be one of {ATTENTION_IMPLEMENTATIONS}"
            )
        try:
            parse_special_tokens(self.special_tokens)
        except ConfigError as error:
            problems.append(str(error))
        return problems


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

    def problems(self, model: ModelConfig | None) -> list[str]:
        """Problems of this section; lengths and buckets against the positions of ``model``
        (its architecture known), or, with None, left to :func:`check_positions`."""
        problems = []
        for name in ("max_source_length", "max_target_length"):
            length = getattr(self, name)
            if length <= 0:
                problems.append(f"data.{name}={length}: must be positive")
            elif model is not None and length > usable_positions(model.max_position_embeddings):
                problems.append(
                    f"data.{name}={length}: exceeds the "
                    f"{usable_positions(model.max_position_embeddings)} usable positions "
                    f"({model.positions_described()} minus offset {POSITION_OFFSET})"
                )
        for side in ("source", "target"):
            problems += self._bucket_problems(side, model)
        if self.bad_rows not in BAD_ROW_POLICIES:
            problems.append(f"data.bad_rows={self.bad_rows!r}: must be one of {BAD_ROW_POLICIES}")
        if self.prefetch < 0:
            problems.append(f"data.prefetch={self.prefetch}: must be >= 0")
        for name in ("text_column", "summary_column"):
            if not getattr(self, name).strip():
                problems.append(f"data.{name} is empty: name a column of the data")
        if self.packing:
            # Every example must fit a row alone; positions restart per segment, so rows may
            # be longer than the position table.
            for side in ("source", "target"):
                row_length = getattr(self, f"packed_{side}_length")
                longest = getattr(self, f"max_{side}_length")
                if row_length < longest:
                    problems.append(
                        f"data.packed_{side}_length={row_length}: shorter than "
                        f"data.max_{side}_length={longest}, so long examples would not fit"
                    )
        return problems

    def _bucket_problems(self, side: str, model: ModelConfig | None) -> list[str]:
        name = f"data.{side}_buckets"
        buckets = getattr(self, f"{side}_buckets")
        max_length = getattr(self, f"max_{side}_length")
        if not buckets:
            return [f"{name}: needs at least one bucket"]
        problems = []
        if any(b <= 0 for b in buckets):
            problems.append(f"{name}={buckets}: bucket sizes must be positive")
        if any(a >= b for a, b in zip(buckets, buckets[1:], strict=False)):
            problems.append(f"{name}={buckets}: buckets must be strictly increasing")
        if buckets[-1] < max_length:
            problems.append(
                f"{name}={buckets}: largest bucket {buckets[-1]} is smaller than the max length "
                f"{max_length}, so the longest sequences would fit no bucket"
            )
        if model is None:
            return problems
        positions = usable_positions(model.max_position_embeddings)
        if buckets[-1] > positions:
            # Padding positions still index the position table, so a bucket past it crashes.
            problems.append(
                f"{name}={buckets}: largest bucket {buckets[-1]} exceeds the {positions} "
                f"positions ({model.positions_described()} minus offset {POSITION_OFFSET})"
            )
        return problems


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
    best_metric: str = EVAL_LOSS  # a metric the evaluation reports (eval_metric_names)
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

    def eval_metric_names(self) -> tuple[str, ...]:
        """What an evaluation reports; ``best_metric`` must be one of these."""
        return (EVAL_LOSS, *ROUGE_TYPES) if self.rouge_every else (EVAL_LOSS,)

    def problems(
        self, process_count: int = 1, batch_shards: int | None = None, shards_name: str = ""
    ) -> list[str]:
        """Problems of this section; ``batch_shards`` (what messages call ``shards_name``), if
        known, must divide each micro-batch."""
        problems = []
        if not self.workdir:
            problems.append("train.workdir: must not be empty")
        for name in (
            "batch_size",
            "grad_accum_steps",
            "num_epochs",
            "learning_rate",
            "max_grad_norm",
            "log_every",
        ):
            if getattr(self, name) <= 0:
                problems.append(f"train.{name}={getattr(self, name)}: must be positive")
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
            if getattr(self, name) < 0:
                problems.append(f"train.{name}={getattr(self, name)}: must be >= 0")
        if self.keep_checkpoints < 1:
            problems.append(
                f"train.keep_checkpoints={self.keep_checkpoints}: must be >= 1 "
                "(the newest checkpoint is what a restarted run resumes from)"
            )
        problems += self._best_metric_problems()
        if self.rouge_tokenization not in ROUGE_TOKENIZATIONS:
            problems.append(
                f"train.rouge_tokenization={self.rouge_tokenization!r}: must be one of "
                f"{ROUGE_TOKENIZATIONS}"
            )
        if self.early_stopping_patience and not self.eval_every:
            problems.append(
                "train.early_stopping_patience: needs train.eval_every > 0 (it counts evaluations)"
            )
        if self.profile_start < 1:
            problems.append(
                f"train.profile_start={self.profile_start}: must be >= 1 (steps count from 1)"
            )
        if self.init_checkpoint is not None and not self.init_checkpoint.strip():
            problems.append("train.init_checkpoint: must be None or a checkpoint directory")
        if not 0.0 <= self.warmup_ratio <= 1.0:
            problems.append(f"train.warmup_ratio={self.warmup_ratio}: must be in [0, 1]")
        if not 0.0 <= self.label_smoothing < 1.0:
            problems.append(f"train.label_smoothing={self.label_smoothing}: must be in [0, 1)")
        return problems + self._batch_problems(process_count, batch_shards, shards_name)

    def _best_metric_problems(self) -> list[str]:
        if not self.best_metric:
            return ["train.best_metric: must not be empty"]
        problems = []
        if self.best_metric not in self.eval_metric_names():
            problems.append(
                f"train.best_metric={self.best_metric!r}: evaluation reports only "
                f"{', '.join(self.eval_metric_names())}"
            )
        if self.best_mode not in BEST_MODES:
            problems.append(f"train.best_mode={self.best_mode!r}: must be one of {BEST_MODES}")
        return problems

    def _batch_problems(
        self, process_count: int, batch_shards: int | None, shards_name: str
    ) -> list[str]:
        if self.batch_size <= 0 or self.grad_accum_steps <= 0:
            return []  # the divisibility checks are meaningless and already reported
        if self.batch_size % self.grad_accum_steps != 0:
            return [
                f"train.batch_size={self.batch_size}: not divisible by "
                f"train.grad_accum_steps={self.grad_accum_steps}"
            ]
        problems = []
        micro_batch = self.batch_size // self.grad_accum_steps
        if batch_shards is not None and micro_batch % batch_shards != 0:
            problems.append(
                f"train.batch_size={self.batch_size} with grad_accum_steps="
                f"{self.grad_accum_steps} gives {micro_batch} examples per micro-batch, "
                f"not divisible by {batch_shards} {shards_name}"
            )
        # Each host reads an equal slice of the global batch.
        if self.batch_size % process_count != 0:
            problems.append(
                f"train.batch_size={self.batch_size}: not divisible by {process_count} processes"
            )
        return problems


@dataclass
class DecodingConfig:
    """How summaries are generated: ROUGE during training, and the exported defaults."""

    num_beams: int = 4  # the original project decoded with beam 4-5
    max_length: int = 128  # summary tokens + the start token
    min_length: int = 0
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    batch_size: int = 32  # articles per generate call

    def problems(self) -> list[str]:
        problems = []
        for name in ("num_beams", "batch_size"):
            if getattr(self, name) <= 0:
                problems.append(f"decoding.{name}={getattr(self, name)}: must be positive")
        for name in ("min_length", "no_repeat_ngram_size"):
            if getattr(self, name) < 0:
                problems.append(f"decoding.{name}={getattr(self, name)}: must be >= 0")
        if self.max_length < 2:
            problems.append(
                f"decoding.max_length={self.max_length}: must be >= 2 (start token + one)"
            )
        return problems


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

    def problems(self, model: ModelConfig | None, device_count: int | None) -> list[str]:
        """Problems of this section; against the architecture of ``model`` if known, and
        against ``device_count`` devices if known."""
        problems = []
        for name in ("expected_processes", "expected_devices"):
            if getattr(self, name) < 0:
                problems.append(f"mesh.{name}={getattr(self, name)}: must be >= 0 (0 = any)")
        if self.tensor > 1 and model is not None:
            # Tensor parallelism splits whole heads, FFN columns and vocabulary rows.
            for name in ("attention_heads", "ffn_dim", "vocab_size"):
                if getattr(model, name) % self.tensor:
                    problems.append(
                        f"mesh.tensor={self.tensor}: does not divide "
                        f"{model.architecture_field(name)}={getattr(model, name)}"
                    )
        try:
            mesh_axis_sizes(self, device_count)
        except ConfigError as error:
            problems.append(str(error))
        return problems

    def check_topology(self, processes: int, devices: int, platform: str) -> None:
        """Stops a run started on another topology than the config was written for (0: any).

        A config tuned for a v4-32 (batch, mesh, memory) would otherwise run on whatever it
        found, or fail much later in a collective or out of memory.
        """
        wrong = []
        if self.expected_processes and processes != self.expected_processes:
            wrong.append(f"{self.expected_processes} processes (this run has {processes})")
        if self.expected_devices and devices != self.expected_devices:
            wrong.append(f"{self.expected_devices} devices (this run has {devices})")
        if wrong:
            raise ConfigError(
                f"the config expects {' and '.join(wrong)}, on {platform}: "
                "start it on the topology it was written for, or override "
                "mesh.expected_processes / mesh.expected_devices (0 = don't check)"
            )


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)


def section_names() -> list[str]:
    return [section.name for section in dataclasses.fields(Config)]


def field_types(section_class: type) -> dict[str, typing.Any]:
    # get_type_hints resolves annotations even if a module turns them into strings.
    return typing.get_type_hints(section_class)


def section_class(section_name: str) -> type:
    return field_types(Config)[section_name]


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
    whose size is known only at run time (a checkpoint, or a ``model.pretrained`` whose
    config.json `validate` could not read)."""
    usable = usable_positions(max_position_embeddings)
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


# ---------------------------------------------------------------------------------------
# Validation


def validate(config: Config, device_count: int | None = None, process_count: int = 1) -> None:
    """Raises ConfigError listing every field that would break the run.

    Meant to run before anything is compiled, so a typo fails in a second, not after the
    first XLA compile on a pod. Pass `device_count` (jax.device_count()) and
    `process_count` (jax.process_count()) to also check that batches shard evenly. With
    `model.pretrained` set, the architecture is that model's config.json, where it can be
    read without a download.
    """
    if device_count is not None and device_count <= 0:
        raise ValueError(f"device_count must be positive, got {device_count}")
    if process_count <= 0:
        raise ValueError(f"process_count must be positive, got {process_count}")
    problems = _type_problems(config)
    # The range checks below would crash or mislead on values of the wrong type.
    _raise_if_any(problems)
    # None: a hub model's config.json not in the local cache; its architecture is checked
    # once the model is loaded (train.py), and the config's own copy is not the model's.
    model = config.model.with_pretrained_architecture()
    problems += model.problems() if model else config.model.setting_problems()
    problems += config.data.problems(model)
    problems += config.mesh.problems(model, device_count)
    batch_shards, shards_name = _batch_shards(config.mesh, device_count)
    problems += config.train.problems(process_count, batch_shards, shards_name)
    problems += config.decoding.problems()
    _raise_if_any(problems)


def _batch_shards(mesh: MeshConfig, device_count: int | None) -> tuple[int | None, str]:
    """mesh.data x mesh.fsdp, what each micro-batch is split over, and what to call it."""
    if device_count is None:
        return None, ""
    try:
        sizes = mesh_axis_sizes(mesh, device_count)
    except ConfigError:
        return None, ""  # reported by MeshConfig.problems
    shards = sizes["data"] * sizes["fsdp"]
    # One shard per device, unless tensor parallelism makes a group of devices share one.
    return shards, "devices" if shards == device_count else "batch shards (mesh.data x mesh.fsdp)"


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


def _type_problems(config: Config) -> list[str]:
    """Catches config files that compute a float where an int belongs (`512 / 2`), and NaN."""
    problems = []
    for section_name in section_names():
        section = getattr(config, section_name)
        for name, annotation in field_types(type(section)).items():
            value = getattr(section, name)
            if not _has_type(value, annotation):
                problems.append(
                    f"{section_name}.{name}={value!r}: expected {_type_name(annotation)}"
                )
            elif isinstance(value, float) and not math.isfinite(value):
                # Every range check compares NaN as False, so NaN would pass them all and
                # train to a NaN model; no field means anything at infinity either.
                problems.append(f"{section_name}.{name}={value!r}: must be a finite number")
    return problems


def _type_name(annotation: typing.Any) -> str:
    return annotation.__name__ if isinstance(annotation, type) else str(annotation)


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
        for section_name in section_names()
    }


def config_from_dict(config_dict: dict[str, dict[str, typing.Any]]) -> Config:
    """Inverse of config_to_dict. Fields missing from the dict keep their defaults, so
    configs saved before a field was added still load; unknown names are an error."""
    unknown_sections = set(config_dict) - set(section_names())
    if unknown_sections:
        raise ConfigError(f"unknown config sections: {sorted(unknown_sections)}")
    sections = {}
    for section_name, section_values in config_dict.items():
        types_by_field = field_types(section_class(section_name))
        unknown_fields = set(section_values) - set(types_by_field)
        if unknown_fields:
            raise ConfigError(
                f"unknown config fields: {sorted(f'{section_name}.{f}' for f in unknown_fields)}"
            )
        values = {
            name: tuple(value) if typing.get_origin(types_by_field[name]) is tuple else value
            for name, value in section_values.items()
        }
        sections[section_name] = section_class(section_name)(**values)
    return Config(**sections)
