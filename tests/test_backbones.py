"""Real backbones (issue 10): keras.applications ResNet50, MobileNetV2, EfficientNetB0 and
ConvNeXtTiny (`weights=None`, no download) as the nested base of a transfer-learning model
`Sequential([Input, base, GlobalAveragePooling2D, Dense])`, fitted with the default monitor.

Each backbone runs at 64x64 (the applications accept 32 px and up), 4 probes, 16 stats_data
samples, one epoch of 2 batches of 8. To keep this file near 1 minute a backend, the base is
trainable for two backbones and frozen for the other two (`CASES`); the pairs are chosen so
that both a ReLU network and a non-ReLU one run each way. TensorFlow and PyTorch run all four;
JAX, where XLA compiles each backbone's train step and check anew (EfficientNetB0 170 s,
MobileNetV2 100 s on 2 cores), runs one of each pair (`JAX_CASES`): the code under test is the
same for the four, and MobileNetV2 from scratch also runs on JAX in
tests/test_training_view.py, all four at 224 px in benchmarks/scale_transformers.py.
"""

from __future__ import annotations

import importlib.abc
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import keras
import numpy as np
import pytest

import actwatch
from actwatch.check.layers import resolve_layers
from actwatch.check.stats import LayerStats

from . import reference as ref
from .helpers import read_events

L = keras.layers
SIZE = 64
CLASSES = 3

BACKBONES: dict[str, Callable[..., keras.Model]] = {
    "resnet50": keras.applications.ResNet50,
    "mobilenetv2": keras.applications.MobileNetV2,
    "efficientnetb0": keras.applications.EfficientNetB0,
    "convnexttiny": keras.applications.ConvNeXtTiny,
}

#: (backbone, base trainable): each backbone once, trainable and frozen alternating.
CASES = [
    ("resnet50", False),
    ("mobilenetv2", True),
    ("efficientnetb0", False),
    ("convnexttiny", True),
]
#: The cases of the JAX run: a frozen ReLU network, a trainable non-ReLU one.
JAX_CASES = [("resnet50", False), ("convnexttiny", True)]

#: The JAX and PyTorch runs block TensorFlow with `sys.modules["tensorflow"] = None`
#: (tests/conftest.py). Keras' Rescaling and Normalization layers (EfficientNet's and
#: ConvNeXt's preprocessing) then see the key and import TensorFlow, which fails; without
#: TensorFlow installed the key is absent and they work. So on those runs these tests block
#: TensorFlow with an import hook instead (`no_tensorflow_key`): importing it still fails.
TENSORFLOW_BLOCKED = "tensorflow" in sys.modules and sys.modules["tensorflow"] is None


class _BlockTensorFlow(importlib.abc.MetaPathFinder):
    """`import tensorflow` fails, as when it is not installed."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name.partition(".")[0] == "tensorflow":
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)


@pytest.fixture
def no_tensorflow_key() -> Iterator[None]:
    """TensorFlow stays blocked, by an import hook rather than a `sys.modules` entry."""
    if not TENSORFLOW_BLOCKED:
        yield
        return
    finder = _BlockTensorFlow()
    del sys.modules["tensorflow"]
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        imported = sys.modules.get("tensorflow")
        sys.modules["tensorflow"] = None  # type: ignore[assignment]
        assert imported is None, "TensorFlow was imported"


#: Layer types whose outputs carry the signal: every one of them in the base is watched.
ACTIVATIONS = (L.Activation, L.ReLU, L.LeakyReLU, L.PReLU, L.ELU)


def transfer_model(backbone: str, trainable: bool) -> tuple[keras.Model, keras.Model]:
    """`Sequential([Input, base, GlobalAveragePooling2D, Dense])` and its base."""
    keras.utils.set_random_seed(0)
    base = BACKBONES[backbone](include_top=False, weights=None, input_shape=(SIZE, SIZE, 3))
    base.trainable = trainable
    model = keras.Sequential(
        [
            keras.Input((SIZE, SIZE, 3)),
            base,
            L.GlobalAveragePooling2D(),
            L.Dense(CLASSES, activation="softmax", name="head"),
        ]
    )
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    return model, base


def is_relu(layer: keras.layers.Layer) -> bool:
    activation = getattr(getattr(layer, "activation", None), "__name__", "")
    return isinstance(layer, L.ReLU) or (isinstance(layer, L.Activation) and activation == "relu")


def assert_matches(stats: LayerStats, output: np.ndarray) -> None:
    """`stats` equal the numpy reference on `output`, as tests/test_models.py checks, but the
    zero fraction within 1e-4: the oracle runs eagerly and the monitor compiled, and a few of
    the ~400,000 values of a linear (GELU, LayerNorm) output sit within rounding of 0."""
    a = ref.to_npc(output)
    assert stats.filters == a.shape[-1]
    assert stats.zero_fraction == pytest.approx(ref.zero_fraction(a), abs=1e-4)
    assert stats.mean == pytest.approx(ref.mean(a), rel=1e-3, abs=1e-4)
    assert stats.hoyer == pytest.approx(ref.hoyer(a), rel=1e-3, abs=1e-4)
    assert stats.dead.tolist() == ref.dead(a).tolist()
    assert stats.nonnegative == ref.nonnegative(a)


def oracle_output(
    container: keras.Model, path: str, x: np.ndarray, *, training: bool
) -> np.ndarray:
    """The output of the layer at `path` on `x`, computed independently of actwatch: a
    sub-model of each container's own graph, from its inputs to the nested model's input,
    then into the nested model (ConvNeXt's stem is a Sequential inside the base). A nested
    model's last inbound node is its call in the container (the first is its own graph's)."""
    name, _, rest = path.partition("/")
    layer = container.get_layer(name)
    if not rest:
        return run_eagerly(keras.Model(container.inputs[0], layer.output), x, training)
    (inner_input,) = layer._inbound_nodes[-1].input_tensors  # its call in `container`
    feed = run_eagerly(keras.Model(container.inputs[0], inner_input), x, training)
    return oracle_output(layer, rest, feed, training=training)


def run_eagerly(model: keras.Model, x: np.ndarray, training: bool) -> np.ndarray:
    """`model(x)`, not compiled (`predict` would compile each sub-model), in a stateless
    scope: with `training`, BatchNormalization on `x`'s own statistics, as a check of a
    trainable base sees it (the trainable bases here have no dropout)."""
    with keras.StatelessScope():
        return np.asarray(keras.ops.convert_to_numpy(model(x, training=training)))


@pytest.mark.parametrize(
    ("backbone", "trainable"),
    CASES,
    ids=[f"{b}-{'trainable' if t else 'frozen'}" for b, t in CASES],
)
@pytest.mark.usefixtures("no_tensorflow_key")
def test_backbone(tmp_path: Path, backbone: str, trainable: bool) -> None:
    """A keras.applications backbone, nested and trainable or frozen, is watched on every
    default layer with statistics equal to numpy's, all its scalars written, and a frozen
    base left unchanged."""
    if keras.backend.backend() == "jax" and (backbone, trainable) not in JAX_CASES:
        pytest.skip("JAX runs ResNet50 and ConvNeXtTiny (compile time): see the module docstring")
    model, base = transfer_model(backbone, trainable)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1.0, 1.0, (16, SIZE, SIZE, 3)).astype("float32")
    y = rng.integers(0, CLASSES, 16)
    stats_data = rng.uniform(-1.0, 1.0, (16, SIZE, SIZE, 3)).astype("float32")
    base_before = [w.copy() for w in base.get_weights()]
    head_before = [w.copy() for w in model.get_layer("head").get_weights()]

    monitor = actwatch.ActivationMonitor(x[:4], tmp_path, stats_data=stats_data)
    model.fit(x, y, epochs=1, batch_size=8, callbacks=[monitor], verbose=0)

    assert monitor._check_failed.count == 0, "a check failed: see the log"
    watched = [w.path for w in resolve_layers(model, None)]
    assert len(watched) > 40
    assert list(monitor.last_stats) == watched
    prefix = f"{base.name}/"
    assert all(path.startswith(prefix) for path in watched)
    for layer in base.layers:
        if isinstance(layer, ACTIVATIONS) and len(layer.output.shape) == 4:
            assert prefix + layer.name in monitor.last_stats, layer.name

    for path in (watched[0], watched[len(watched) // 2], watched[-1]):
        expected = oracle_output(model, path, stats_data, training=trainable)
        assert_matches(monitor.last_stats[path], expected)

    events = read_events(tmp_path)
    for path in watched:
        for metric in ("zero_fraction", "dormant_fraction", "hoyer", "mean"):
            assert f"{metric}/{path}" in events.scalars, f"{metric}/{path}"
        if monitor.last_stats[path].nonnegative:  # "dead" is written only for ReLU-like outputs
            assert f"dead_fraction/{path}" in events.scalars, f"dead_fraction/{path}"
    relus = [layer for layer in base.layers if is_relu(layer)]
    assert bool(relus) == (backbone in ("resnet50", "mobilenetv2"))
    for layer in relus:
        assert f"dead_fraction/{prefix}{layer.name}" in events.scalars, layer.name
        assert len(events.scalars[f"zero_fraction/{path}"]) == 2  # before training, epoch 1

    changed = [
        not np.array_equal(a, b) for a, b in zip(base_before, base.get_weights(), strict=True)
    ]
    assert any(changed) == trainable
    head = model.get_layer("head").get_weights()
    assert any(not np.array_equal(a, b) for a, b in zip(head_before, head, strict=True))
