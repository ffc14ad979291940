"""The network as training sees it (issue 19): a check normalises every BatchNormalization
that `fit` runs in training mode with the checked batch's own statistics, keeps dropout,
noise and augmentation off, leaves a frozen BatchNormalization in inference mode, and writes
nothing (moving statistics, seed generators, optimizer), in graph, nested and subclassed
models."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import pytest

from actwatch.check.layers import resolve_layers
from actwatch.check.pipeline import CheckPipeline
from actwatch.check.stats import LayerStats

from . import reference as ref
from .test_backbones import no_tensorflow_key  # noqa: F401  (a fixture)

L = keras.layers
SIZE = 10
STATS = 12  # statistics samples, before the probes
PROBES = 4


def _np(a: Any) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(a))


def assert_stats(stats: LayerStats, output: np.ndarray) -> None:
    """`stats` are numpy's on `output` (the layer's output on the statistics samples)."""
    a = ref.to_npc(output)
    assert stats.filters == a.shape[-1]
    assert stats.zero_fraction == pytest.approx(ref.zero_fraction(a), abs=1e-5)
    assert stats.mean == pytest.approx(ref.mean(a), rel=1e-3, abs=1e-4)
    assert stats.hoyer == pytest.approx(ref.hoyer(a), rel=1e-3, abs=1e-4)
    assert stats.dead.tolist() == ref.dead(a).tolist()


def batch(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(0.5, 1.0, (n, SIZE, SIZE, 3)).astype("float32")
    return x, rng.integers(0, 3, n)


def trained(model: keras.Model, steps: int = 3) -> keras.Model:
    """`model` compiled with Adam and fitted `steps` batches of 8: the moving statistics lag
    (momentum 0.99), so inference mode is far from what training sees."""
    model.compile(keras.optimizers.Adam(0.05), "sparse_categorical_crossentropy")
    x, y = batch(8 * steps, seed=1)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    return model


def conv_bn_net() -> keras.Model:
    """conv -> bn -> relu -> dropout -> conv2 (relu) -> pooling -> softmax head."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3))
    h = L.Conv2D(8, 3, name="conv")(inputs)
    h = L.BatchNormalization(name="bn")(h)
    h = L.ReLU(name="relu")(h)
    h = L.Dropout(0.5, name="drop")(h)
    h = L.Conv2D(6, 3, activation="relu", name="conv2")(h)
    h = L.GlobalAveragePooling2D(name="gap")(h)
    return keras.Model(inputs, L.Dense(3, activation="softmax", name="head")(h))


def batch_norm(norm: Any, h: np.ndarray, *, training: bool = True) -> np.ndarray:
    """BatchNormalization by hand: in training mode with the statistics of `h` itself, else
    with the layer's moving statistics."""
    h = h.astype(np.float64)
    if training:
        mean, var = h.mean(axis=(0, 1, 2)), h.var(axis=(0, 1, 2))
    else:
        mean, var = (_np(w).astype(np.float64) for w in (norm.moving_mean, norm.moving_variance))
    gamma, beta = (_np(w).astype(np.float64) for w in (norm.gamma, norm.beta))
    return (h - mean) / np.sqrt(var + norm.epsilon) * gamma + beta


def training_pass(layer: Callable[[str], Any], x: np.ndarray) -> dict[str, np.ndarray]:
    """`conv_bn_net`'s outputs in training mode with dropout off, by hand: each layer called
    on its own (`layer(name)`), the BatchNormalization in numpy on `x`'s statistics."""
    conv = _np(layer("conv")(x))
    bn = batch_norm(layer("bn"), conv)
    relu = np.maximum(bn, 0.0)
    conv2 = _np(layer("conv2")(relu.astype("float32")))  # dropout off: the identity
    return {"conv": conv, "bn": bn, "relu": relu, "conv2": conv2}


def state(model: keras.Model) -> list[np.ndarray]:
    """Every variable of the model (weights, moving statistics, seed generators' states)
    and of its optimizer (its iterations included)."""
    return [_np(v).copy() for v in [*model.variables, *model.optimizer.variables]]


@pytest.mark.parametrize("stats_samples", [STATS, 0])
def test_statistics_are_the_training_pass(stats_samples: int) -> None:
    """The check's statistics are those of the training-mode pass with dropout off, by hand,
    on the statistics samples (the probes after them change nothing), not inference's."""
    model = trained(conv_bn_net())
    x, _ = batch(STATS + PROBES)
    names = ["conv", "bn", "relu", "conv2"]
    watched = resolve_layers(model, names)
    result = CheckPipeline(model, watched, stats_samples=stats_samples).run(x)
    sample = x[:stats_samples] if stats_samples else x
    expected = training_pass(model.get_layer, sample)
    for name in names:
        assert_stats(result.stats[name], expected[name])
    # The reference is what Keras' own training mode gives.
    with keras.StatelessScope():  # leaves the moving statistics be
        bn = keras.Model(model.inputs[0], model.get_layer("bn").output)(sample, training=True)
    np.testing.assert_allclose(_np(bn), expected["bn"], rtol=1e-4, atol=1e-4)
    # The inference view (kept for measurements) is `predict`'s, and differs.
    old = CheckPipeline(model, watched, stats_samples=stats_samples, inference=True).run(x)
    relu = keras.Model(model.inputs[0], model.get_layer("relu").output)
    assert_stats(old.stats["relu"], _np(relu(sample, training=False)))
    assert abs(old.stats["bn"].mean - result.stats["bn"].mean) > 1e-2


def test_probes_are_normalised_with_the_statistics_samples() -> None:
    """The probes' maps come from the statistics samples' batch statistics."""
    model = trained(conv_bn_net())
    x, _ = batch(STATS + PROBES)
    (relu,) = resolve_layers(model, ["relu"])
    result = CheckPipeline(model, [relu], stats_samples=STATS, max_side=SIZE).run(x)
    conv = _np(model.get_layer("conv")(x)).astype(np.float64)
    norm = model.get_layer("bn")
    mean, var = conv[:STATS].mean(axis=(0, 1, 2)), conv[:STATS].var(axis=(0, 1, 2))
    gamma, beta = _np(norm.gamma), _np(norm.beta)
    probes = np.maximum((conv[STATS:] - mean) / np.sqrt(var + norm.epsilon) * gamma + beta, 0)
    codes = ref.normalize_maps(probes)
    assert np.abs(result.maps["relu"].astype(int) - codes.astype(int)).max() <= 1


def test_gradients_take_the_training_pass() -> None:
    """With labels, the one call's activations are the training pass's, and the loss's
    gradient by the ReLU's output is the backend's through the rest with dropout off."""
    model = trained(conv_bn_net())
    x, y = batch(STATS + PROBES)
    watched = resolve_layers(model, ["bn", "relu"])
    pipeline = CheckPipeline(model, watched, stats_samples=STATS, labels=(y[:STATS], None))
    result = pipeline.run(x)
    expected = training_pass(model.get_layer, x[:STATS])
    assert_stats(result.stats["relu"], expected["relu"])
    assert_stats(result.stats["bn"], expected["bn"])
    conv2, gap, head = (model.get_layer(n) for n in ("conv2", "gap", "head"))
    labels = y[:STATS]

    def loss(r: Any) -> Any:
        probs = head(gap(conv2(r)))
        picked = keras.ops.take_along_axis(probs, keras.ops.convert_to_tensor(labels[:, None]), 1)
        return -keras.ops.mean(keras.ops.log(picked))

    grads = gradient(loss, expected["relu"].astype("float32")).astype(np.float64)
    got = result.gradients["relu"]
    assert got.rms == pytest.approx(float(np.sqrt(np.mean(grads**2))), rel=1e-3)
    per_filter = np.abs(grads).reshape(-1, grads.shape[-1]).mean(axis=0)
    np.testing.assert_allclose(got.filter_mean_abs, per_filter, rtol=1e-3, atol=1e-9)


def gradient(function: Callable[[Any], Any], x: np.ndarray) -> np.ndarray:
    """The gradient of the scalar `function` at `x`, by the backend's autodiff."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return np.asarray(jax.grad(function)(x))
    if backend == "tensorflow":
        import tensorflow as tf

        t = tf.convert_to_tensor(x)
        with tf.GradientTape() as tape:
            tape.watch(t)
            value = function(t)
        return np.asarray(tape.gradient(value, t))
    import torch

    u = torch.tensor(x, requires_grad=True)
    function(u).backward()
    assert u.grad is not None
    return np.asarray(u.grad.detach().cpu().numpy())


class Noisy(L.Layer):
    """Draws noise in its own `call`, training or not: its seed generator must not move."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seed_generator = keras.random.SeedGenerator(7)

    def call(self, x: Any) -> Any:
        return x + 0.01 * keras.random.normal(keras.ops.shape(x), seed=self.seed_generator)


def noisy_net() -> keras.Model:
    """Augmentation, every noise and dropout layer, a layer drawing noise itself, a
    trainable BatchNormalization and a frozen one."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3))
    h = L.RandomFlip(name="flip")(inputs)
    h = L.RandomTranslation(0.2, 0.2, name="shift")(h)
    h = L.GaussianNoise(0.3, name="noise")(h)
    h = Noisy(name="noisy")(h)
    h = L.Conv2D(8, 3, name="conv")(h)
    h = L.BatchNormalization(name="bn")(h)
    h = L.ReLU(name="relu")(h)
    h = L.SpatialDropout2D(0.3, name="spatial")(h)
    h = L.GaussianDropout(0.3, name="gdrop")(h)
    h = L.Conv2D(6, 3, name="conv2")(h)
    h = L.BatchNormalization(name="frozen")(h)
    h = L.ReLU(name="relu2")(h)
    h = L.AlphaDropout(0.3, name="alpha")(h)
    h = L.Dropout(0.3, name="drop")(L.GlobalAveragePooling2D()(h))
    return keras.Model(inputs, L.Dense(3, activation="softmax", name="head")(h))


@pytest.mark.parametrize("labels", [False, True], ids=["forward", "gradients"])
@pytest.mark.usefixtures("no_tensorflow_key")  # augmentation layers look for TensorFlow
def test_a_check_changes_nothing(labels: bool) -> None:
    """After checks (with and without the gradients' backward pass), every variable of the
    model and its optimizer is bit-identical: moving statistics, seed generators' states,
    the optimizer's slots and iterations; two checks give the same numbers."""
    model = noisy_net()
    model.get_layer("frozen").trainable = False
    model = trained(model)
    x, y = batch(STATS + PROBES)
    watched = resolve_layers(model, ["relu", "relu2"])
    given = (y[:STATS], None) if labels else None
    pipeline = CheckPipeline(model, watched, stats_samples=STATS, labels=given)
    before = state(model)
    iterations = int(_np(model.optimizer.iterations))
    first = pipeline.run(x)
    second = pipeline.run(x)
    after = state(model)
    assert len(after) == len(before)
    for old, new in zip(before, after, strict=True):
        assert np.array_equal(old, new)
    assert int(_np(model.optimizer.iterations)) == iterations == 3
    for name in ("relu", "relu2"):
        assert first.stats[name].scalars() == second.stats[name].scalars()
        np.testing.assert_array_equal(first.maps[name], second.maps[name])
    # Augmentation, noise and the frozen norm as at inference; "bn" on batch statistics.
    conv = _np(model.get_layer("conv")(model.get_layer("noisy")(x[:STATS])))
    relu = np.maximum(batch_norm(model.get_layer("bn"), conv), 0.0)
    assert_stats(first.stats["relu"], relu)
    conv2 = _np(model.get_layer("conv2")(relu.astype("float32")))
    frozen = batch_norm(model.get_layer("frozen"), conv2, training=False)
    assert_stats(first.stats["relu2"], np.maximum(frozen, 0.0))


def test_a_frozen_batch_normalization_stays_in_inference_mode() -> None:
    """A BatchNormalization frozen before the check normalises with its moving statistics,
    as `fit` runs it; frozen between two checks, from the next check on (a recompile)."""
    model = trained(conv_bn_net())
    x, _ = batch(STATS + PROBES)
    watched = resolve_layers(model, ["bn", "conv2"])
    pipeline = CheckPipeline(model, watched, stats_samples=STATS)
    sample = x[:STATS]
    assert_stats(pipeline.run(x).stats["bn"], training_pass(model.get_layer, sample)["bn"])
    norm = model.get_layer("bn")
    norm.trainable = False
    conv = _np(model.get_layer("conv")(sample))
    inference = batch_norm(norm, conv, training=False)
    result = pipeline.run(x)
    assert_stats(result.stats["bn"], inference)
    conv2 = _np(model.get_layer("conv2")(np.maximum(inference, 0).astype("float32")))
    assert_stats(result.stats["conv2"], conv2)
    # Frozen from the start: no BatchNormalization in training mode, the inference view.
    fresh = CheckPipeline(model, watched, stats_samples=STATS).run(x)
    assert_stats(fresh.stats["bn"], inference)


def test_nested_model() -> None:
    """A functional backbone nested in a Sequential model: its layers are read in the
    training pass through the nested model's own graph."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3))
    h = L.Conv2D(8, 3, name="conv")(inputs)
    h = L.ReLU(name="relu")(L.BatchNormalization(name="bn")(h))
    h = L.Conv2D(6, 3, activation="relu", name="conv2")(L.Dropout(0.5, name="drop")(h))
    base = keras.Model(inputs, h, name="base")
    model = keras.Sequential(
        [keras.Input((SIZE, SIZE, 3)), base, L.GlobalAveragePooling2D(), L.Dense(3)]
    )
    model = trained(model)
    model.compile(keras.optimizers.Adam(0.05), "sparse_categorical_crossentropy")
    x, _ = batch(STATS + PROBES)
    names = ["base/conv", "base/bn", "base/relu", "base/conv2"]
    result = CheckPipeline(model, resolve_layers(model, names), stats_samples=STATS).run(x)
    expected = training_pass(base.get_layer, x[:STATS])
    for name in names:
        assert_stats(result.stats[name], expected[name.partition("/")[2]])


class Subclassed(keras.Model):
    """conv -> bn -> relu -> dropout -> conv2 in a `call`, `training` passed on."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = L.Conv2D(8, 3)
        self.bn = L.BatchNormalization()
        self.relu = L.ReLU()
        self.drop = L.Dropout(0.5)
        self.conv2 = L.Conv2D(6, 3, activation="relu")
        self.gap = L.GlobalAveragePooling2D()
        self.head = L.Dense(3, activation="softmax")

    def call(self, x: Any, training: bool | None = None) -> Any:
        h = self.relu(self.bn(self.conv(x), training=training))
        h = self.conv2(self.drop(h, training=training))
        return self.head(self.gap(h))


def test_subclassed_model() -> None:
    """Layers captured inside a subclassed model's `call` are read in the training pass."""
    keras.utils.set_random_seed(0)
    model = Subclassed()
    model(batch(1)[0])  # built
    model = trained(model)
    x, _ = batch(STATS + PROBES)
    names = ["conv", "bn", "relu", "conv2"]
    result = CheckPipeline(model, resolve_layers(model, names, x), stats_samples=STATS).run(x)
    expected = training_pass(lambda name: getattr(model, name), x[:STATS])
    for name in names:
        assert_stats(result.stats[name], expected[name])


MOBILENET_SIZE = 64


@pytest.mark.slow  # 10-20 s on 2 CPU cores: MobileNetV2 (width 0.35) is built, fitted, compiled
def test_mobilenetv2_from_scratch_has_no_false_dead_filters() -> None:
    """Issue 19: a from-scratch MobileNetV2 after 2 steps shows ~30 layers with "dead"
    filters in inference mode; the check (the training pass) reports none dead in a layer
    where the training pass on the same samples has none."""
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(
        weights=None, input_shape=(MOBILENET_SIZE, MOBILENET_SIZE, 3), classes=5, alpha=0.35
    )
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (32, MOBILENET_SIZE, MOBILENET_SIZE, 3)).astype("float32")
    x = keras.applications.mobilenet_v2.preprocess_input(images)
    model.fit(x, rng.integers(0, 5, 32), batch_size=16, epochs=1, verbose=0)
    sample = x[:16]
    watched = resolve_layers(model, None, sample)
    pipeline = CheckPipeline(model, watched, draw=False, signals=False)
    checked = pipeline.run(sample).stats
    outputs = keras.Model(model.inputs[0], [w.layer.output for w in watched])
    with keras.StatelessScope():  # leaves the moving statistics be
        train = [ref.dead(ref.to_npc(_np(a))) for a in outputs(sample, training=True)]
    infer = [ref.dead(ref.to_npc(_np(a))) for a in outputs(sample, training=False)]
    assert sum(bool(d.any()) for d in infer) >= 10  # what the inference view reported
    for w, dead in zip(watched, train, strict=True):
        if not dead.any():
            assert checked[w.path].dead_count == 0, w.path


def test_masked_batch_normalization() -> None:
    """A BatchNormalization behind a mask (Embedding with `mask_zero`) takes the statistics
    of the unmasked positions, as Keras' own training mode does."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,), dtype="int32")
    h = L.Embedding(9, 5, mask_zero=True, name="embed")(inputs)
    h = L.Dense(4, name="proj")(h)
    h = L.ReLU(name="relu")(L.BatchNormalization(name="bn")(h))
    model = keras.Model(inputs, L.Dense(3, activation="softmax")(L.GlobalAveragePooling1D()(h)))
    x = np.random.default_rng(0).integers(0, 9, (8, 6)).astype("int32")
    x[:, 4:] = 0  # masked
    result = CheckPipeline(model, resolve_layers(model, ["bn"]), draw=False).run(x)
    with keras.StatelessScope():
        expected = keras.Model(model.inputs[0], model.get_layer("bn").output)(x, training=True)
    assert_stats(result.stats["bn"], _np(expected))


class InferenceByCode(keras.Model):
    """`bn1` follows `training`; `bn2` is always called with `training=False`."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = L.Conv2D(8, 3)
        self.bn1 = L.BatchNormalization()
        self.bn2 = L.BatchNormalization()
        self.gap = L.GlobalAveragePooling2D()
        self.head = L.Dense(3, activation="softmax")

    def call(self, x: Any, training: bool | None = None) -> Any:
        h = self.bn1(self.conv(x), training=training)
        h = self.bn2(h, training=False)
        return self.head(self.gap(h))


def test_batch_normalization_called_in_inference_mode_stays_so() -> None:
    """A BatchNormalization that the model's `call` runs with `training=False` is in
    inference mode in the check too, as in `fit`."""
    keras.utils.set_random_seed(0)
    model = InferenceByCode()
    model(batch(1)[0])  # built
    model = trained(model)
    x, _ = batch(STATS)
    watched = resolve_layers(model, ["bn1", "bn2"], x)
    result = CheckPipeline(model, watched).run(x)
    bn1 = batch_norm(model.bn1, _np(model.conv(x)))
    assert_stats(result.stats["bn1"], bn1)
    assert_stats(result.stats["bn2"], batch_norm(model.bn2, bn1, training=False))


def pooled_bn_net() -> keras.Model:
    """conv (relu) -> global pooling -> bn -> relu: the bn sees one value per channel and
    sample, so one probe gives it a zero batch variance in training mode."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3))
    h = L.Conv2D(6, 3, activation="relu", name="conv")(inputs)
    h = L.GlobalAveragePooling2D(name="gap")(h)
    h = L.ReLU(name="relu")(L.BatchNormalization(name="bn")(h))
    return keras.Model(inputs, L.Dense(3, activation="softmax", name="head")(h))


def test_one_value_per_channel_falls_back_to_inference_mode(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Review of issue 19: a BatchNormalization after global pooling, checked on one probe
    without stats_data, had a zero batch variance: every filter after it "dead". It runs in
    inference mode instead, said once at WARNING; with 2 probes, training mode again."""
    model = trained(pooled_bn_net())
    x, _ = batch(2)
    norm = model.get_layer("bn")
    pooled = _np(model.get_layer("gap")(model.get_layer("conv")(x))).reshape(2, 1, 1, -1)
    pipeline = CheckPipeline(model, resolve_layers(model, ["relu"]))
    with caplog.at_level("WARNING", logger="actwatch"):
        one = [pipeline.run(x[:1]).stats["relu"] for _ in range(2)]
    said = [r.getMessage() for r in caplog.records if "fewer than 2 values" in r.getMessage()]
    assert len(said) == 1 and "'bn'" in said[0], said
    inference = np.maximum(batch_norm(norm, pooled[:1], training=False), 0.0)
    assert inference.max() > 0  # the inference pass fires: nothing is dead there
    for stats in one:
        assert_stats(stats, inference.reshape(1, -1))
    two = CheckPipeline(model, resolve_layers(model, ["relu"])).run(x).stats["relu"]
    assert_stats(two, np.maximum(batch_norm(norm, pooled), 0.0).reshape(2, -1))


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="PyTorch's own kernel path")
@pytest.mark.parametrize("rows", [0, 6])
def test_pytorch_takes_its_batch_norm_kernel_with_keras_numbers(
    rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PyTorch the training view's BatchNormalization runs `F.batch_norm`
    (`batchnorm.torch_normalized`, counted here) and gives Keras' own training-mode numbers:
    on all samples, or with the statistics of the `rows` leading ones applied to the rest."""
    from actwatch.check import capture

    calls: list[int] = []
    real = capture.torch_normalized

    def counted(*args: Any) -> Any:
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(capture, "torch_normalized", counted)
    norm = L.BatchNormalization(center=True, scale=True)
    x = np.random.default_rng(1).normal(2.0, 3.0, (10, 5, 5, 4)).astype("float32")
    norm.build(x.shape)
    norm.gamma.assign(np.linspace(0.5, 2.0, 4).astype("float32"))
    norm.beta.assign(np.linspace(-1.0, 1.0, 4).astype("float32"))
    got = _np(capture.batch_normalized(norm, x, rows=rows, fused=True))
    assert calls == [1]
    head = x[:rows] if rows else x
    mean, var = head.mean(axis=(0, 1, 2)), head.var(axis=(0, 1, 2))
    expected = (x - mean) / np.sqrt(var + norm.epsilon) * _np(norm.gamma) + _np(norm.beta)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    if not rows:
        with keras.StatelessScope():
            keras_own = _np(norm(x, training=True))
        np.testing.assert_allclose(got, keras_own, rtol=1e-4, atol=1e-4)
