"""One check's device work: forward pass, statistics and uint8 maps in one compiled call
(with labels, the gradients of activations too: the same call's backward pass).

The forward pass is the network as training sees it (`capture.TrainingView`): each
BatchNormalization that `fit` runs in training mode normalises with the statistics of the
checked batch's statistics samples, dropout and noise are off, and nothing is written.

Shared by the callback and the notebook functions, so both read activations the same way.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import keras
import numpy as np
from keras import ops

from actwatch.check.extract import Extractor
from actwatch.check.gradients import GradientStats, gradient_stats, reduce_gradients
from actwatch.check.images import default_drawn
from actwatch.check.kinds import nonnegative
from actwatch.check.layers import WatchedLayer
from actwatch.check.maps import channel_mean, heat_maps, normalize_maps
from actwatch.check.signals import (
    HISTOGRAM_SAMPLE,
    reduce_signals,
    reduce_topk,
    sample_values,
    topk_from_device,
)
from actwatch.check.signals import histograms as histogram_counts
from actwatch.check.stats import SIGNAL_INPUTS, LayerStats, reduce_layer, summarize
from actwatch.check.tokens import TokenPicture
from actwatch.check.transformer_items import TransformerItems
from actwatch.render.tiles import TopK

__all__ = ["CheckPipeline", "CheckResult", "DrawRule"]


@dataclass(frozen=True)
class CheckResult:
    """What one check brings back to the host, per watched layer path.

    `maps` holds uint8 codes `(probes, H, W, F)` or `(probes, F)` for Dense outputs, at most
    `max_filters` filters; `heat` holds uint8 `(probes, H, W)` (absent for Dense outputs);
    `topk` the top-k statistics samples of each drawn filter (when asked for); `gradients`
    the gradient figures of every layer (with labels); `tokens` a transformer's pictures,
    keyed `"attention/{path}"` and `"tokens/{path}"` (`check.tokens.TokenPicture`).
    """

    stats: dict[str, LayerStats]
    maps: dict[str, np.ndarray]
    heat: dict[str, np.ndarray]
    topk: dict[str, TopK] = field(default_factory=dict)
    gradients: dict[str, GradientStats] = field(default_factory=dict)
    tokens: dict[str, TokenPicture] = field(default_factory=dict)


def _channels_last(a: Any, layer: WatchedLayer) -> Any:
    a = ops.cast(a, "float32")
    if layer.rank > 2 and layer.channel_axis == 1:
        a = ops.moveaxis(a, 1, -1)
    return a


#: Picks the layers to draw from `(path, channels-last output shape)` of every watched layer.
DrawRule = Callable[[Sequence[tuple[str, tuple[int | None, ...]]]], Collection[str]]


def _chosen(
    drawn: Collection[str] | DrawRule | None,
    shapes: Sequence[tuple[str, tuple[int | None, ...]]],
    roles: dict[str, str],
) -> set[str]:
    if drawn is None:
        return {path for path, _ in shapes}
    if drawn is default_drawn:  # the default rule also reads the transformer roles
        return set(default_drawn(shapes, roles))
    if callable(drawn):
        return set(drawn(shapes))
    return set(drawn)


def _as_maps(a: Any, rank: int, max_side: int) -> Any:
    """Channels-last output -> `(N, H, W, C)` pictures (or `(N, C)` for Dense)."""
    if rank == 2:
        return a
    if rank == 3:
        a = ops.expand_dims(a, 1)
    elif rank == 5:
        a = ops.max(a, axis=1)  # 3-D maps: maximum projection over depth
    h, w = int(a.shape[1]), int(a.shape[2])
    if max(h, w) > max_side:
        scale = max_side / max(h, w)
        size = (max(1, math.floor(h * scale)), max(1, math.floor(w * scale)))
        a = keras.ops.image.resize(a, size, interpolation="bilinear", data_format="channels_last")
    return a


class CheckPipeline:
    """Run the watched layers on a fixed batch and bring back statistics and maps.

    The batch goes through the network as `fit` runs it (`capture.TrainingView`): each
    BatchNormalization in training mode normalises with the mean and variance of the
    statistics samples (of the whole batch when `stats_samples` is 0), and the probes after
    them are normalised with the same; dropout and noise are off; nothing is written to the
    model. Dead, dormant and sparse filters are then those of the pass training takes.

    Args:
        model: the model.
        watched: layers from `resolve_layers`.
        stats_samples: how many leading samples of the batch are statistics data; 0 means
            the statistics are computed on the probes themselves.
        max_filters: at most this many filters per layer are drawn (the first ones).
        max_side: maps larger than this many pixels a side are resized down for drawing.
        dormant_threshold: tau of the tau-dormant test.
        draw: also bring back uint8 maps and heatmaps for drawing.
        drawn: which layers to draw: their paths, or a rule called with `(path, channels-last
            output shape)` of every watched layer (shapes without the batch axis, known when
            the compiled call is traced) returning paths. Defaults to every watched layer.
        signals: compute the signals of `signals` (signal propagation, outliers). Defaults
            to True.
        histograms: with `signals`, the activation histogram of every layer. Defaults to True.
        feature_rank: with `signals`, effective rank and srank. Defaults to True.
        topk: for each drawn filter of each drawn layer (with `draw`), bring back the `topk`
            statistics samples whose activation peaks highest, and where. 0 (the default)
            brings back none.
        labels: `(y, sample_weight)` (`sample_weight` may be None) of the `stats_samples`
            leading samples: the check's call also takes the compiled loss's gradients with
            respect to every watched output on those samples (one backward pass), and brings
            back their figures (`CheckResult.gradients`). The model must have been compiled
            with a loss (`ValueError` otherwise). Defaults to None: no gradients.
        inference: run the inference view instead (`predict`'s: BatchNormalization on its
            moving statistics), for measurements only: its dead filters may be filters
            that fire on every batch `fit` sees. Defaults to False.
    """

    def __init__(
        self,
        model: keras.Model,
        watched: Sequence[WatchedLayer],
        *,
        stats_samples: int = 0,
        max_filters: int = 64,
        max_side: int = 64,
        dormant_threshold: float = 0.025,
        draw: bool = True,
        drawn: Collection[str] | DrawRule | None = None,
        signals: bool = True,
        histograms: bool = True,
        feature_rank: bool = True,
        topk: int = 0,
        labels: tuple[Any, Any] | None = None,
        inference: bool = False,
    ) -> None:
        self.watched = list(watched)
        self.dormant_threshold = dormant_threshold
        layers = self.watched
        self._spatial: dict[str, tuple[int, ...]] = {}  # channels-last, set when traced
        self._transformer = TransformerItems(model, stats_samples)

        def reduce(outputs: list[Any], careful: bool = False) -> list[dict[str, Any]]:
            """Per watched layer: `{"stats": {...}, "maps": ..., "heat": ...}` (device).

            The statistics take `reduce_layer`'s fast path, or with `careful` its careful
            one (for a check where a layer has NaN, Inf or huge values: `stats["ok"]`).
            """
            out: list[dict[str, Any]] = []
            outputs = [
                _channels_last(raw, layer) for layer, raw in zip(layers, outputs, strict=True)
            ]
            chosen = _chosen(
                drawn,
                [(w.path, tuple(a.shape[1:])) for w, a in zip(layers, outputs, strict=True)],
                {w.path: w.role for w in layers},
            )
            flats: list[Any] = []
            for layer, a in zip(layers, outputs, strict=True):
                self._spatial[layer.path] = tuple(int(d) for d in a.shape[1:-1])
                sample = a[:stats_samples] if stats_samples else a
                flat = ops.reshape(sample, (sample.shape[0], -1, layer.channels))
                reduced = reduce_layer(
                    flat, "careful" if careful else "fast", nonnegative=nonnegative(layer.layer)
                )
                inputs = {key: reduced.pop(key) for key in SIGNAL_INPUTS}  # stay on device
                item: dict[str, Any] = {"stats": reduced}
                if signals:
                    item["signals"] = reduce_signals(
                        flat, inputs, histogram=False, feature_rank=feature_rank
                    )
                    flats.append(sample_values(flat, HISTOGRAM_SAMPLE))
                if layer.role:  # a transformer's attention layer, block or MLP
                    item.update(
                        self._transformer.reduce(
                            layer.role,
                            a,
                            extractor.extras,
                            layer.path,
                            draw and layer.path in chosen,
                            reduced,  # an MLP's units over the real tokens (padding)
                        )
                    )
                if draw and topk > 0 and layer.path in chosen:
                    item["topk"] = reduce_topk(flat, topk, max_filters)
                if draw and layer.path in chosen:
                    probes = a[stats_samples:] if stats_samples else a
                    # Resized after taking the drawn filters, and the heatmap's mean over
                    # channels before resizing (both commute with the linear resize): the
                    # resize touches 64 channels and 1, not all (MobileNetV2: 144 at 112 px).
                    maps = _as_maps(probes[..., :max_filters], layer.rank, max_side)
                    # The fast path's figures stand only where every value of `sample` is
                    # finite (`ok`); when the probes are that sample, the maps need not
                    # set NaN and Inf apart (a check that is not `ok` is redone carefully).
                    finite = not careful and not stats_samples
                    item["maps"] = normalize_maps(maps, finite)
                    if layer.rank == 5:  # the maximum over depth first: not a linear map
                        item["heat"] = heat_maps(_as_maps(probes, 5, max_side), finite)
                    elif layer.rank > 2:
                        item["heat"] = heat_maps(
                            _as_maps(channel_mean(probes, finite), layer.rank, max_side), True
                        )
                out.append(item)
            if signals and histograms:  # every layer's histogram in one call
                counts = histogram_counts(flats)
                for i, item in enumerate(out):
                    item["signals"]["histogram"] = counts[i]
            return out

        extractor = Extractor(
            model,
            self.watched,
            gradients=labels is not None,
            batch_rows=stats_samples,
            inference=inference,
            attention=[(w.path, w.layer) for w in self.watched if w.role == "attention"],
        )
        self._make_runner: Callable[[bool], Callable[[Any], Any]] = lambda careful: (
            extractor.make_runner(functools.partial(reduce, careful=careful))
        )
        self._run: Callable[[Any], Any] | None = None  # without gradients: compiled when needed
        self._run_careful: Callable[[Any], Any] | None = None  # compiled when first needed
        self._run_labelled: Callable[[Any], Any] | None = None  # with the gradients
        self._prepare: Callable[[Any], None] = lambda inputs: None
        if labels is not None:
            reduce_grads = reduce_gradients(self.watched)
            run_labelled = extractor.make_gradient_runner(
                lambda outputs, grads: (reduce(outputs), reduce_grads(grads))
            )
            self._run_labelled = lambda x: run_labelled(x, *labels)
            self._prepare = lambda x: extractor.prepare(x, *labels)

    @property
    def gradients(self) -> bool:
        """Whether the checks bring back gradient figures."""
        return self._run_labelled is not None

    def check_labels(self, inputs: Any) -> None:
        """With labels, raise `ValueError` now if the loss refuses them (one sample, eager)."""
        if self._run_labelled is not None:
            self._prepare(inputs)

    def drop_gradients(self) -> None:
        """Bring back no gradients from now on (when they failed): the checks go on."""
        self._run_labelled = None

    def run(self, inputs: Any) -> CheckResult:
        """Run one check on `inputs` (an array, or a list for multi-input models).

        A check where a layer's fast statistics are not `ok` is run again carefully, without
        the backward pass: the gradient figures are the first call's.
        """
        stats: dict[str, LayerStats] = {}
        maps: dict[str, np.ndarray] = {}
        heat: dict[str, np.ndarray] = {}
        topk: dict[str, TopK] = {}
        gradients: dict[str, GradientStats] = {}
        tokens: dict[str, TokenPicture] = {}
        if self._run_labelled is not None:
            items, raw = self._run_labelled(inputs)
            gradients = gradient_stats(raw, self.watched, self.dormant_threshold)
        else:
            if self._run is None:
                self._run = self._make_runner(False)
            items = self._run(inputs)
        if not all(bool(item["stats"]["ok"]) for item in items):
            if self._run_careful is None:
                self._run_careful = self._make_runner(True)
            items = self._run_careful(inputs)
        for layer, item in zip(self.watched, items, strict=True):
            del item["stats"]["ok"]
            if "topk" in item:
                topk[layer.path] = topk_from_device(item["topk"], self._spatial[layer.path])
            stats[layer.path] = summarize(
                item["stats"], self.dormant_threshold, item.get("signals")
            )
            if layer.role:
                shape = (int(item["stats"]["values"]) // max(layer.channels, 1), layer.channels)
                figures, pictures, where = self._transformer.finish(
                    layer.path, item, (*self._rows(shape, layer), layer.channels), inputs
                )
                stats[layer.path] = replace(stats[layer.path], transformer=figures, peak_at=where)
                tokens.update(pictures)
            if "maps" in item:
                maps[layer.path] = item["maps"]
            if "heat" in item and not layer.role:
                # A token layer's channel mean is a strip of tokens, no picture of the probe:
                # its `tokens/` picture (on the patch grid) takes the heatmap's place.
                heat[layer.path] = item["heat"]
        return CheckResult(
            stats=stats, maps=maps, heat=heat, topk=topk, gradients=gradients, tokens=tokens
        )

    def _rows(self, shape: tuple[int, int], layer: WatchedLayer) -> tuple[int, int]:
        """(samples, tokens) of a rank-3 layer's statistics data, from its value count."""
        spatial = self._spatial.get(layer.path, ())
        tokens = int(spatial[0]) if spatial else 1
        return shape[0] // max(tokens, 1), tokens
