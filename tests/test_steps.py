"""train_step / eval_step: accumulation, masking, sharding, and the optimizer recipe."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from tiny_models import tiny_kobart_config

from kobart_flax import optim, sharding, steps, train
from kobart_flax.pretrained import FlaxBartForConditionalGeneration

PAD = 3


@pytest.fixture(scope="module")
def model():
    # No dropout: deterministic, so different batch splits must agree exactly.
    config = tiny_kobart_config(50, dropout=0.0, attention_dropout=0.0)
    assert config.pad_token_id == PAD
    return FlaxBartForConditionalGeneration(config, seed=0)


def make_batch(batch_size=4, source_len=8, target_len=6, seed=0):
    rng = np.random.default_rng(seed)
    input_ids = rng.integers(4, 50, (batch_size, source_len)).astype(np.int32)
    attention_mask = np.ones_like(input_ids)
    labels = rng.integers(4, 50, (batch_size, target_len)).astype(np.int32)
    decoder_attention_mask = np.ones_like(labels)
    # Different amounts of padding per row, so token-weighted means differ from row means.
    for row in range(batch_size):
        attention_mask[row, source_len - row :] = 0
        input_ids[row, source_len - row :] = PAD
        decoder_attention_mask[row, target_len - 2 * row % target_len :] = 0
        labels[row, target_len - 2 * row % target_len :] = PAD
    decoder_input_ids = np.concatenate([np.ones((batch_size, 1), np.int32), labels[:, :-1]], 1)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "decoder_input_ids": decoder_input_ids,
        "decoder_attention_mask": decoder_attention_mask,
        "labels": labels,
    }


def make_step(
    model, mesh=None, *, grad_accum_steps=1, label_smoothing=0.0, params=None, freeze=False
):
    """(new_state, step): the step training runs (train.make_train_step) on ``mesh`` (default:
    the first device), and a function giving a fresh train state for it on the mesh.

    The step donates the state it is given, so each call needs a state of its own; new_state
    copies ``params``, so no call can take the shared fixture's params with it.
    """
    if mesh is None:
        mesh = sharding.make_data_mesh(jax.devices()[:1])
    schedule = optim.learning_rate_schedule(1e-3, total_steps=10, warmup_ratio=0.2)
    optimizer = optim.make_optimizer(schedule, weight_decay=0.01, max_grad_norm=1.0)
    params = params or model.params

    def unplaced_state():
        copied = jax.tree.map(jnp.copy, params)
        return steps.create_train_state(copied, optimizer, jax.random.key(0))

    state_sharding = jax.tree.map(
        lambda _: sharding.replicated(mesh), jax.eval_shape(unplaced_state)
    )

    def new_state():
        return jax.device_put(unplaced_state(), state_sharding)

    step = train.make_train_step(
        model,
        optimizer,
        schedule,
        state_sharding,
        mesh,
        grad_accum_steps=grad_accum_steps,
        label_smoothing=label_smoothing,
        freeze_final_logits_bias=freeze,
    )
    return new_state, step


def assert_same_update(once, accumulated):
    """Two (state, metrics) results of one step from the same state agree: loss, token
    count, gradient norm and the updated params."""
    (state_once, metrics_once), (state_accumulated, metrics_accumulated) = once, accumulated
    for name in ("loss", "target_tokens"):
        np.testing.assert_allclose(metrics_once[name], metrics_accumulated[name], rtol=1e-6)
    np.testing.assert_allclose(
        metrics_once["grad_norm"], metrics_accumulated["grad_norm"], rtol=1e-5
    )
    for a, b in zip(
        jax.tree.leaves(state_once.params),
        jax.tree.leaves(state_accumulated.params),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_gradient_accumulation_equals_one_big_batch(model):
    batch = make_batch()
    new_state, step_once = make_step(model, grad_accum_steps=1)
    _, step_accumulated = make_step(model, grad_accum_steps=2)
    accumulated = step_accumulated(new_state(), batch)
    assert_same_update(step_once(new_state(), batch), accumulated)
    assert int(accumulated[0].step) == 1


def test_micro_batch_k_takes_every_accum_th_row():
    rows = np.arange(12)[:, None] * np.ones((1, 3), np.int32)  # [12, 3], row r full of r
    micro = np.asarray(steps.strided_micro_batches(jnp.asarray(rows), 3))
    assert micro.shape == (3, 4, 3)
    np.testing.assert_array_equal(micro[:, :, 0], [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8, 11]])


@pytest.mark.parametrize("grad_accum_steps", [2, 4])
def test_accumulation_on_two_devices_equals_one_step_over_the_batch(model, grad_accum_steps):
    mesh = sharding.make_data_mesh(jax.devices()[:2])
    batch = sharding.global_batch(make_batch(batch_size=8), mesh)
    new_state, step_once = make_step(model, mesh)
    _, step_accumulated = make_step(model, mesh, grad_accum_steps=grad_accum_steps)
    assert_same_update(step_once(new_state(), batch), step_accumulated(new_state(), batch))


def test_micro_batches_stay_on_the_devices_that_hold_their_rows(model):
    """Each device's rows feed every micro-batch, so accumulating moves no batch data: the
    only collective in the compiled step is the all-reduce of the gradients and metrics."""
    mesh = sharding.make_data_mesh(jax.devices()[:2])
    batch = sharding.global_batch(make_batch(batch_size=8), mesh)
    new_state, step = make_step(model, mesh, grad_accum_steps=4)
    compiled = step.lower(new_state(), batch).compile().as_text()
    assert "all-reduce" in compiled
    for data_movement in ("all-to-all", "all-gather", "collective-permute"):
        assert data_movement not in compiled, data_movement


def test_loss_ignores_padding_positions(model):
    batch = make_batch()
    altered = {name: array.copy() for name, array in batch.items()}
    padding = batch["decoder_attention_mask"] == 0
    assert padding.any()
    altered["labels"][padding] = 7
    altered["decoder_input_ids"][:, 1:][padding[:, :-1]] = 9
    new_state, step = make_step(model)
    _, metrics = step(new_state(), batch)
    _, metrics_altered = step(new_state(), altered)
    np.testing.assert_allclose(metrics["loss"], metrics_altered["loss"], rtol=1e-6)
    assert metrics["target_tokens"] == batch["decoder_attention_mask"].sum()


def logits_of(model, params, batch):
    return model.module.apply(
        {"params": params},
        batch["input_ids"],
        batch["attention_mask"],
        batch["decoder_input_ids"],
        batch["decoder_attention_mask"],
    )


def reference_loss(logits, batch, label_smoothing):
    """The token-weighted, label-smoothed cross entropy, written out in numpy (float64)."""
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    vocab = logits.shape[-1]
    one_hot = np.eye(vocab)[batch["labels"]]
    # Smoothing moves label_smoothing of the mass off the label, spread evenly over the vocab.
    targets = (1.0 - label_smoothing) * one_hot + label_smoothing / vocab
    token_losses = -(targets * log_probs).sum(-1)
    mask = batch["decoder_attention_mask"]
    return (token_losses * mask).sum() / mask.sum()


def test_loss_is_token_weighted_cross_entropy(model):
    batch = make_batch()
    expected = reference_loss(logits_of(model, model.params, batch), batch, 0.0)
    metrics = steps.eval_step(model.params, batch, apply_fn=model.module.apply)
    np.testing.assert_allclose(metrics["loss_sum"] / metrics["tokens"], expected, rtol=1e-5)


def fit(model, batch, updates=100):
    """Params that have memorised ``batch``: Adam on the plain loss."""
    optimizer = optax.adam(1e-2)

    def loss(params):
        loss_sum, tokens = steps.summed_loss(model.module.apply, params, batch, 0.0, None)
        return loss_sum / tokens

    @jax.jit
    def update(params, opt_state):
        grads = jax.grad(loss)(params)
        changes, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, changes), opt_state

    params, opt_state = model.params, optimizer.init(model.params)
    for _ in range(updates):
        params, opt_state = update(params, opt_state)
    return params


def test_label_smoothing_raises_the_loss_of_a_fitted_model(model):
    batch = make_batch()
    params = fit(model, batch)
    logits = logits_of(model, params, batch)
    losses = {}
    for label_smoothing in (0.0, 0.1):
        new_state, step = make_step(model, label_smoothing=label_smoothing, params=params)
        _, metrics = step(new_state(), batch)
        losses[label_smoothing] = float(metrics["loss"])
        expected = reference_loss(logits, batch, label_smoothing)
        np.testing.assert_allclose(losses[label_smoothing], expected, rtol=1e-5, atol=1e-6)
    # Fitted: far below the log(50) = 3.9 of a uniform guess, so the label holds almost all
    # the probability and the smoothed targets, which ask for 10% elsewhere, cost more.
    assert losses[0.0] < 0.5
    assert losses[0.1] > losses[0.0] + 0.1


def test_train_step_is_the_same_on_one_and_two_devices(model):
    assert jax.device_count() >= 2, "conftest.py sets up two simulated CPU devices"
    batch = make_batch()
    losses = []
    for devices in (jax.devices()[:1], jax.devices()[:2]):
        mesh = sharding.make_data_mesh(devices)
        new_state, step = make_step(model, mesh)
        state = new_state()
        global_batch = sharding.global_batch(batch, mesh)
        assert len(global_batch["input_ids"].sharding.device_set) == len(devices)
        for _ in range(3):
            state, metrics = step(state, global_batch)
            losses.append(float(metrics["loss"]))
    np.testing.assert_allclose(losses[:3], losses[3:], rtol=1e-5)


def test_weight_decay_skips_biases_and_layer_norms(model):
    mask = optim.weight_decay_mask(model.params)
    encoder_layer = mask["model"]["encoder"]["layers"]["0"]
    assert encoder_layer["fc1"]["kernel"] is True
    assert encoder_layer["fc1"]["bias"] is False
    assert encoder_layer["self_attn_layer_norm"]["scale"] is False
    assert mask["model"]["shared"]["embedding"] is True
    assert mask["final_logits_bias"] is False


def test_frozen_final_logits_bias_is_used_but_not_trained(model):
    """As in PyTorch BART, where final_logits_bias is a buffer rather than a parameter."""
    params = dict(model.params)
    params["final_logits_bias"] = jnp.linspace(-1.0, 1.0, 50)[None, :]
    batch = make_batch()
    for freeze in (False, True):
        new_state, step = make_step(model, params=params, freeze=freeze)
        state = new_state()
        for _ in range(3):
            state, _ = step(state, batch)
        bias_changed = not np.array_equal(
            state.params["final_logits_bias"], params["final_logits_bias"]
        )
        assert bias_changed == (not freeze)
        assert not np.allclose(
            state.params["model"]["shared"]["embedding"], params["model"]["shared"]["embedding"]
        )
    # The forward pass still adds it: a different bias gives a different loss.
    loss_with_bias, _ = steps.summed_loss(model.module.apply, params, batch, 0.0, None)
    loss_without, _ = steps.summed_loss(model.module.apply, model.params, batch, 0.0, None)
    assert abs(float(loss_with_bias) - float(loss_without)) > 1e-3


def test_schedule_warms_up_linearly_then_decays_to_zero():
    schedule = optim.learning_rate_schedule(1.0, total_steps=100, warmup_ratio=0.1)
    assert float(schedule(0)) == 0.0
    assert float(schedule(5)) == pytest.approx(0.5)
    assert float(schedule(10)) == pytest.approx(1.0)
    assert float(schedule(55)) == pytest.approx(0.5)
    assert float(schedule(100)) == pytest.approx(0.0)


def test_clipping_bounds_the_gradient_seen_by_adam():
    params = {"w": jnp.ones(3)}
    optimizer = optim.make_optimizer(lambda _: 1.0, weight_decay=0.0, max_grad_norm=1.0)
    state = optimizer.init(params)
    _, state = optimizer.update({"w": jnp.array([30.0, 40.0, 0.0])}, state, params)
    # Adam's first moment after one step is (1 - b1) * clipped gradient.
    adam_state = state[1][0]
    np.testing.assert_allclose(adam_state.mu["w"], 0.1 * np.array([0.6, 0.8, 0.0]), rtol=1e-6)
