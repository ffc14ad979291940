"""Real backbones (issue 10): keras.applications ResNet50, MobileNetV2, EfficientNetB0 and
ConvNeXtTiny (`weights=None`, no download) as the nested base of a transfer-learning model
`Sequential([Input, base, GlobalAveragePooling2D, Dense])`, fitted with the default monitor.

Each backbone runs on every backend at 64x64 (the applications accept 32 px and up), 4
probes, 16 stats_data samples, one epoch of 2 batches of 8. To keep this file near 2 minutes
a backend, the base is trainable for two backbones and frozen for the other two (`CASES`);
the pairs are chosen so that both a ReLU network and a non-ReLU one run each way.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import pytest

import actwatch
from actwatch.layers import resolve_layers

from .helpers import read_events
from .test_models import assert_matches

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


def oracle_output(container: keras.Model, path: str, x: np.ndarray) -> np.ndarray:
    """The output of the layer at `path` on `x`, computed independently of actwatch: a
    sub-model of each container's own graph, from its inputs to the nested model's input,
    then into the nested model (ConvNeXt's stem is a Sequential inside the base). A nested
    model's last inbound node is its call in the container (the first is its own graph's)."""
    name, _, rest = path.partition("/")
    layer = container.get_layer(name)
    if not rest:
        return np.asarray(keras.Model(container.inputs, layer.output).predict(x, verbose=0))
    (inner_input,) = layer._inbound_nodes[-1].input_tensors  # its call in `container`
    feed = keras.Model(container.inputs, inner_input).predict(x, verbose=0)
    return oracle_output(layer, rest, np.asarray(feed))


@pytest.mark.parametrize(
    ("backbone", "trainable"),
    CASES,
    ids=[f"{b}-{'trainable' if t else 'frozen'}" for b, t in CASES],
)
def test_backbone(tmp_path: Path, backbone: str, trainable: bool) -> None:
    """A keras.applications backbone, nested and trainable or frozen, is watched on every
    default layer with statistics equal to numpy's, all its scalars written, and a frozen
    base left unchanged."""
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
        assert_matches(monitor.last_stats[path], oracle_output(model, path, stats_data))

    events = read_events(tmp_path)
    for path in watched:
        for metric in ("zero_fraction", "dead_fraction", "dormant_fraction", "hoyer", "mean"):
            assert f"{metric}/{path}" in events.scalars, f"{metric}/{path}"
        assert len(events.scalars[f"zero_fraction/{path}"]) == 2  # before training, epoch 1

    changed = [
        not np.array_equal(a, b) for a, b in zip(base_before, base.get_weights(), strict=True)
    ]
    assert any(changed) == trainable
    head = model.get_layer("head").get_weights()
    assert any(not np.array_equal(a, b) for a, b in zip(head_before, head, strict=True))
