import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from kobart_flax.config import (
    Config,
    ConfigError,
    MeshConfig,
    config_from_dict,
    config_to_dict,
    validate,
)
from kobart_flax.overrides import apply_overrides, load_config, parse_args, parse_value

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = str(REPO_ROOT / "configs" / "tiny.py")
KOBART_BASE = str(REPO_ROOT / "configs" / "kobart_base.py")
CONFIG_MODULE = REPO_ROOT / "kobart_flax" / "config.py"


def with_field(config: Config, section: str, **values) -> Config:
    """A copy of config with fields of one section replaced, bypassing override parsing."""
    return dataclasses.replace(
        config, **{section: dataclasses.replace(getattr(config, section), **values)}
    )


def test_config_module_does_not_import_jax():
    # Loaded by path in a fresh interpreter, so the package __init__ does not count.
    script = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('config', {str(CONFIG_MODULE)!r})\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "print('jax' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


# --- config files ------------------------------------------------------------------------


def test_tiny_config_loads_and_validates_on_one_device():
    config = load_config(TINY)
    validate(config, device_count=1)
    assert config.model.pretrained is None
    assert config.train.learning_rate == 1e-3
    assert config.data.source_buckets == (64, 128)


def test_kobart_base_config_loads_and_validates_on_a_v4_32_pod():
    config = load_config(KOBART_BASE)
    validate(config, device_count=16, process_count=4)
    assert config.model.pretrained == "gogamza/kobart-base-v1"
    assert config.model.dtype == "bfloat16"
    assert config.train.batch_size == 512
    assert config.data.max_source_length == 512


def test_defaults_validate():
    validate(Config(), device_count=8, process_count=2)


def test_load_config_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "nope.py"))


def test_load_config_without_get_config(tmp_path):
    path = tmp_path / "empty.py"
    path.write_text("x = 1\n")
    with pytest.raises(ConfigError, match="get_config"):
        load_config(str(path))


def test_load_config_that_returns_a_dict(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text("def get_config():\n    return {'train': {}}\n")
    with pytest.raises(ConfigError, match="returned dict"):
        load_config(str(path))


# --- overrides ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, section, name, expected",
    [
        ("train.batch_size=64", "train", "batch_size", 64),
        ("train.learning_rate=3e-5", "train", "learning_rate", 3e-5),
        ("train.learning_rate=1", "train", "learning_rate", 1.0),
        ("train.workdir=gs://bucket/run=1", "train", "workdir", "gs://bucket/run=1"),
        (
            "model.pretrained=gogamza/kobart-base-v1",
            "model",
            "pretrained",
            "gogamza/kobart-base-v1",
        ),
        ("model.pretrained=none", "model", "pretrained", None),
        ("model.pretrained=NULL", "model", "pretrained", None),
        ("data.source_buckets=64,128,256", "data", "source_buckets", (64, 128, 256)),
        ("data.source_buckets= 512 , 1024 ", "data", "source_buckets", (512, 1024)),
        ("data.target_buckets=128", "data", "target_buckets", (128,)),
    ],
)
def test_override_parses_the_field_type(override, section, name, expected):
    config = apply_overrides(Config(), [override])
    value = getattr(getattr(config, section), name)
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(
    "text, expected",
    [("true", True), ("True", True), ("1", True), ("false", False), ("FALSE", False), ("0", False)],
)
def test_parse_bool(text, expected):
    assert parse_value(text, bool, "x.flag") is expected


def test_parse_bool_rejects_other_words():
    with pytest.raises(ConfigError, match="x.flag: expected bool, got 'yes please'"):
        parse_value("yes please", bool, "x.flag")


def test_overrides_apply_in_order_and_leave_the_input_alone():
    original = Config()
    updated = apply_overrides(original, ["train.batch_size=64", "train.batch_size=128"])
    assert updated.train.batch_size == 128
    assert original == Config()


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.batch_size=abc", "train.batch_size: expected int, got 'abc'"),
        ("train.batch_size=1.5", "train.batch_size: expected int, got '1.5'"),
        ("train.learning_rate=fast", "train.learning_rate: expected float, got 'fast'"),
        ("data.source_buckets=64,big", "data.source_buckets: expected comma-separated ints"),
        ("train.batch_size", "train.batch_size: missing '='"),
        ("trian.batch_size=4", "unknown config section 'trian'.*did you mean 'train'"),
        ("train.batch_sise=4", "unknown config field 'train.batch_sise'.*'train.batch_size'"),
        ("batch_size=4", "did you mean 'train.batch_size'"),
    ],
)
def test_bad_override_names_the_field(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(Config(), [override])


# --- validation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "section, values, message",
    [
        ("train", {"batch_size": 0}, "train.batch_size=0: must be positive"),
        ("train", {"grad_accum_steps": 0}, "train.grad_accum_steps=0: must be positive"),
        ("train", {"num_epochs": -1}, "train.num_epochs=-1: must be positive"),
        ("train", {"learning_rate": 0.0}, "train.learning_rate=0.0: must be positive"),
        ("train", {"warmup_ratio": 1.5}, r"train.warmup_ratio=1.5: must be in \[0, 1\]"),
        ("train", {"max_steps": -1}, "train.max_steps=-1: must be >= 0"),
        ("train", {"label_smoothing": 1.0}, "train.label_smoothing"),
        ("train", {"workdir": ""}, "train.workdir: must not be empty"),
        ("model", {"d_model": 0}, "model.d_model=0: must be positive"),
        ("model", {"dropout": 1.0}, r"model.dropout=1.0: must be in \[0, 1\)"),
        ("model", {"attention_dropout": -0.1}, "model.attention_dropout=-0.1"),
        ("model", {"dtype": "float16"}, "model.dtype='float16': must be one of"),
        ("model", {"d_model": 130}, "model.d_model=130: not divisible by model.attention_heads=4"),
        ("data", {"bad_rows": "warn"}, "data.bad_rows='warn': must be one of"),
        ("data", {"prefetch": -1}, "data.prefetch=-1"),
        (
            "data",
            {"max_source_length": 1025, "source_buckets": (512, 1025)},
            "data.max_source_length=1025: exceeds the 1024 usable positions",
        ),
        (
            "data",
            {"max_target_length": 2000, "target_buckets": (2000,)},
            "data.max_target_length=2000: exceeds the 1024 usable positions",
        ),
        (
            "data",
            {"source_buckets": (64, 256, 128)},
            "data.source_buckets=.*strictly increasing",
        ),
        (
            "data",
            {"target_buckets": (32, 64)},
            "data.target_buckets=.*largest bucket 64 is smaller than the max length 128",
        ),
        ("data", {"source_buckets": ()}, "data.source_buckets: needs at least one bucket"),
        ("data", {"source_buckets": (512, 2048)}, "data.source_buckets=.*exceeds the 1024"),
        (
            "data",
            {"packing": True, "packed_source_length": 256},
            "data.packed_source_length=256: shorter than data.max_source_length=512",
        ),
        (
            "data",
            {"packing": True, "packed_target_length": 64},
            "data.packed_target_length=64: shorter than data.max_target_length=128",
        ),
        ("train", {"batch_size": 256.0}, "train.batch_size=256.0: expected int"),
        ("data", {"source_buckets": [64, 512]}, "data.source_buckets=.*expected tuple"),
        ("model", {"dropout": True}, "model.dropout=True: expected float"),
    ],
)
def test_invalid_value_names_the_field(section, values, message):
    with pytest.raises(ConfigError, match=message):
        validate(with_field(Config(), section, **values))


FLOAT_FIELDS = [
    f"{section.name}.{name.name}"
    for section in dataclasses.fields(Config)
    for name in dataclasses.fields(section.type)
    if name.type in (float, "float")
]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
@pytest.mark.parametrize("key", FLOAT_FIELDS)
def test_non_finite_floats_are_refused_naming_the_field(key, value):
    # Range checks compare with NaN as False, so NaN passed every one of them.
    config = apply_overrides(Config(), [f"{key}={value}"])
    with pytest.raises(ConfigError) as error:
        validate(config)
    (line,) = [line for line in str(error.value).splitlines() if key in line]
    assert f"{key}={value}: must be a finite number" in line


def test_packed_rows_may_be_longer_than_the_position_table():
    # Positions restart at every packed example, so only each example must fit.
    validate(with_field(Config(), "data", packing=True, packed_source_length=2048))


def test_max_lengths_may_use_all_1024_positions():
    config = with_field(Config(), "data", max_source_length=1024, source_buckets=(512, 1024))
    validate(config)


def test_validate_reports_every_problem_at_once():
    config = with_field(Config(), "train", batch_size=0, learning_rate=-1.0)
    with pytest.raises(ConfigError) as error:
        validate(config)
    assert "train.batch_size" in str(error.value)
    assert "train.learning_rate" in str(error.value)


def test_batch_not_divisible_by_devices():
    config = with_field(Config(), "train", batch_size=30, grad_accum_steps=1)
    validate(config)  # fine without knowing the devices
    with pytest.raises(ConfigError) as error:
        validate(config, device_count=16)
    assert (
        "train.batch_size=30 with grad_accum_steps=1 gives 30 examples per micro-batch, "
        "not divisible by 16 devices"
    ) in str(error.value)


def test_micro_batch_not_divisible_by_devices():
    config = with_field(Config(), "train", batch_size=64, grad_accum_steps=8)
    validate(config, device_count=8)
    with pytest.raises(ConfigError, match="gives 8 examples per micro-batch"):
        validate(config, device_count=16)


def test_batch_not_divisible_by_grad_accum_steps():
    config = with_field(Config(), "train", batch_size=32, grad_accum_steps=3)
    with pytest.raises(ConfigError, match="train.batch_size=32: not divisible by train.grad_acc"):
        validate(config)


def test_batch_not_divisible_by_processes():
    config = with_field(Config(), "train", batch_size=30)
    with pytest.raises(ConfigError, match="train.batch_size=30: not divisible by 4 processes"):
        validate(config, process_count=4)


# --- serialisation -----------------------------------------------------------------------


def test_dict_round_trip_through_json():
    config = apply_overrides(load_config(KOBART_BASE), ["data.source_buckets=128,512"])
    as_json = json.dumps(config_to_dict(config))
    restored = config_from_dict(json.loads(as_json))
    assert restored == config
    assert isinstance(restored.data.source_buckets, tuple)


def test_from_dict_fills_missing_fields_with_defaults():
    restored = config_from_dict({"train": {"batch_size": 8}})
    assert restored.train.batch_size == 8
    assert restored.train.learning_rate == Config().train.learning_rate
    assert restored.model == Config().model


def test_from_dict_rejects_unknown_names():
    with pytest.raises(ConfigError, match="train.batch"):
        config_from_dict({"train": {"batch": 8}})
    with pytest.raises(ConfigError, match="optim"):
        config_from_dict({"optim": {}})


# --- command line ------------------------------------------------------------------------


def test_parse_args_loads_the_file_and_applies_overrides():
    config = parse_args(["--config", KOBART_BASE, "train.batch_size=256", "model.dtype=float32"])
    assert config.model.pretrained == "gogamza/kobart-base-v1"
    assert config.train.batch_size == 256
    assert config.model.dtype == "float32"


def test_parse_args_defaults_to_tiny(monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    assert parse_args([]) == load_config(TINY)


def test_parse_args_bad_override_exits_with_the_field_name(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--config", TINY, "train.batch_size=abc"])
    assert exit_info.value.code == 2
    assert "train.batch_size: expected int, got 'abc'" in capsys.readouterr().err


def test_parse_args_help_shows_an_example(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    help_text = capsys.readouterr().out
    assert "example:" in help_text
    assert "--config configs/kobart_base.py train.workdir=gs://" in help_text


# --- checkpoint fields (train section) ----------------------------------------------------


@pytest.mark.parametrize(
    "values, message",
    [
        ({"checkpoint_every": -1}, "train.checkpoint_every=-1: must be >= 0"),
        ({"keep_checkpoints": 0}, "train.keep_checkpoints=0: must be >= 1"),
        ({"keep_best": -1}, "train.keep_best=-1: must be >= 0"),
        ({"best_metric": ""}, "train.best_metric: must not be empty"),
        ({"best_mode": "lowest"}, r"train.best_mode='lowest': must be one of \('min', 'max'\)"),
        ({"init_checkpoint": " "}, "train.init_checkpoint: must be None or a checkpoint dir"),
        ({"keep_best": 1.0}, "train.keep_best=1.0: expected int"),
    ],
)
def test_invalid_checkpoint_field_names_the_field(values, message):
    with pytest.raises(ConfigError, match=message):
        validate(with_field(Config(), "train", **values))


def test_checkpoint_fields_from_the_command_line():
    config = apply_overrides(
        Config(),
        [
            "train.checkpoint_every=0",
            "train.keep_best=3",
            "train.best_metric=rougeL",
            "train.best_mode=max",
            "train.rouge_every=100",  # without ROUGE no evaluation reports rougeL
            "train.init_checkpoint=gs://bucket/run1/checkpoints",
        ],
    )
    validate(config)
    assert config.train.checkpoint_every == 0
    assert config.train.keep_best == 3
    assert (config.train.best_metric, config.train.best_mode) == ("rougeL", "max")
    assert config.train.init_checkpoint == "gs://bucket/run1/checkpoints"
    assert apply_overrides(config, ["train.init_checkpoint=none"]).train.init_checkpoint is None


@pytest.mark.parametrize("path", [TINY, KOBART_BASE])
def test_config_files_checkpoint_during_training_and_keep_the_best(path):
    train = load_config(path).train
    assert train.checkpoint_every > 0  # not only at the end: preemptible VMs
    assert train.keep_checkpoints >= 1
    assert train.keep_best >= 1
    # The best metric is one the evaluation reports, ranked the right way round.
    expected_mode = "min" if train.best_metric == "eval_loss" else "max"
    assert train.best_mode == expected_mode
    assert train.best_metric == "eval_loss" or train.rouge_every > 0
    assert train.init_checkpoint is None


def test_best_metric_must_be_one_the_evaluation_reports():
    config = with_field(Config(), "train", best_metric="rougeL", best_mode="max")
    with pytest.raises(ConfigError, match="train.best_metric='rougeL': evaluation reports only"):
        validate(config)
    validate(with_field(config, "train", rouge_every=100))
    with pytest.raises(
        ConfigError, match="evaluation reports only eval_loss, rouge1, rouge2, rougeL"
    ):
        validate(with_field(config, "train", rouge_every=100, best_metric="rouge3"))


# --- topology ----------------------------------------------------------------------------


def test_wrong_topology_names_what_the_config_expects():
    MeshConfig(expected_processes=1, expected_devices=2).check_topology(1, 2, "cpu")
    MeshConfig().check_topology(1, 2, "cpu")  # 0 = any
    with pytest.raises(
        ConfigError,
        match=r"expects 4 processes \(this run has 1\) and 16 devices \(this run has 2\), on cpu",
    ):
        MeshConfig(expected_processes=4, expected_devices=16).check_topology(1, 2, "cpu")


# --- model.pretrained: the checkpoint's architecture, not the config's --------------------


def write_model_config(directory: Path, **architecture) -> str:
    """A model directory holding only config.json: all that validation reads."""
    directory.mkdir()
    kobart = {
        "vocab_size": 30000,
        "d_model": 768,
        "encoder_layers": 6,
        "decoder_layers": 6,
        "encoder_attention_heads": 16,
        "encoder_ffn_dim": 3072,
        "max_position_embeddings": 1026,
    }
    (directory / "config.json").write_text(json.dumps({**kobart, **architecture}))
    return str(directory)


def test_pretrained_positions_come_from_the_checkpoint_not_the_config(tmp_path):
    model_dir = write_model_config(tmp_path / "short", max_position_embeddings=130)
    # The config's own (unused) field would allow 1024 positions.
    config = with_field(Config(), "model", pretrained=model_dir, max_position_embeddings=1026)
    with pytest.raises(ConfigError) as error:
        validate(config)
    expected = (
        "data.max_source_length=512: exceeds the 128 usable positions "
        f"(max_position_embeddings=130 in {model_dir}/config.json minus offset 2)"
    )
    assert expected in [line.strip() for line in str(error.value).splitlines()]
    validate(with_field(config, "model", pretrained=write_model_config(tmp_path / "long")))


def test_pretrained_architecture_decides_the_tensor_split(tmp_path):
    model_dir = write_model_config(tmp_path / "kobart")
    config = dataclasses.replace(
        with_field(Config(), "model", pretrained=model_dir, attention_heads=3, ffn_dim=7),
        mesh=MeshConfig(tensor=4),
    )
    validate(config, device_count=8)  # 16 heads, FFN 3072, vocab 30000: all split by 4
    config = dataclasses.replace(config, mesh=MeshConfig(tensor=32))
    with pytest.raises(
        ConfigError, match=f"mesh.tensor=32: does not divide encoder_attention_heads in {model_dir}"
    ):
        validate(config)


def test_pretrained_model_without_its_config_at_hand_is_checked_after_loading():
    # Not a directory and not in the hub cache: nothing to read offline, so the config's own
    # architecture fields, unused, are not judged either.
    config = with_field(Config(), "model", pretrained="nobody/not-cached", d_model=130)
    validate(config)


def test_unreadable_pretrained_config_is_one_line(tmp_path):
    model_dir = tmp_path / "broken"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"model.pretrained=.*config.json: not JSON"):
        validate(with_field(Config(), "model", pretrained=str(model_dir)))
    (model_dir / "config.json").write_text('{"d_model": 768}')
    with pytest.raises(ConfigError, match=r"config.json: expected the BART keys vocab_size"):
        validate(with_field(Config(), "model", pretrained=str(model_dir)))
