"""`ActivationMonitor`: the Keras callback that wires the rooms together."""

from __future__ import annotations

import functools
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import keras
import numpy as np

from actwatch._logging import WarnOnce, logger
from actwatch.check.gradients import GradientStats
from actwatch.check.images import default_drawn, render_images
from actwatch.check.layers import check_layer_specs, resolve_drawn, resolve_layers, weight_sources
from actwatch.check.pipeline import CheckPipeline, CheckResult
from actwatch.check.probes import (
    ProbeBatch,
    check_preprocess,
    model_inputs,
    prepare_probes,
    read_probe_source,
)
from actwatch.check.signals import check_outlier_ratio
from actwatch.check.stats import LayerStats, NetworkStats
from actwatch.diagnose.alerts import Alert, AlertTracker, Decision
from actwatch.diagnose.revive import Reviver, check_revive, plan
from actwatch.diagnose.updates import DEFAULT_BOUNDS, RatioTracker, UpdateRatios
from actwatch.events import tags
from actwatch.events.histograms import HistogramHistory, histogram_values
from actwatch.events.sink import Sink, SinkStats, check_log_dir
from actwatch.fit.args import flag, fraction, positive_int
from actwatch.fit.distribute import is_chief
from actwatch.fit.steps import StepCounter

__all__ = ["ActivationMonitor"]


class ActivationMonitor(keras.callbacks.Callback):  # type: ignore[misc]
    """Watch the activations of a model's layers while it trains.

    At every check, the probes (a fixed batch of images) go once through the model; for every
    watched layer actwatch writes to TensorBoard a grid of all its filters and a heatmap per
    probe, scalars of sparsity (zero fraction, Hoyer), dead and tau-dormant filters and the
    mean activation, and Markdown text for alerts. Dead filters (output <= 0 for every
    sample) are alerted on logger `"actwatch"` at WARNING, passed to `on_alert`, and can stop
    training. Network-wide figures are added to the `logs` dict (keys `actwatch_<metric>`),
    so `EarlyStopping`, `CSVLogger` and others can use them; put this callback before them.

    Checks: one before the first batch (not when resuming with `initial_epoch`: the run
    that stopped there checked that state at its end), then every `every_n_epochs` epochs
    (or every `every_n_batches` batches), and one at the end of training if the last state was not
    checked. The TensorBoard step of a check is the number of training batches run so far:
    the batches this `fit()` ran (counted as they run, so a stop in the middle of an epoch
    is checked at the batch it stopped at) on top of where the model started
    (`model.optimizer.iterations`, or `initial_epoch * steps_per_epoch` when that is larger,
    as after a weights-only resume). Steps never go backwards across repeated `fit()` calls.
    A monitor reused on the same model and layers keeps its alert memory: filters alerted in
    one fit are not alerted again in the next unless they revive and die again. `alerts`
    holds the alerts of the current (or last) fit.

    Args:
        probes: the images to draw: a numpy batch `(n, height, width, channels)`, a list of
            image paths or PIL images (resized to the model's input size; raw 0-255 pixels,
            see `preprocess`), or for multi-input models a dict by input name or a list of
            arrays. A handful (4-8) is plenty.
        log_dir: directory for the TensorBoard events file (created). Run
            `tensorboard --logdir LOG_DIR` and open its actwatch tab to see every check's
            images.
        layers: what to watch. Defaults to every convolution, pooling and activation layer
            with a channel axis, in nested models, subclassed models and custom layers too,
            except a linear convolution whose output goes into an activation (conv -> BN ->
            ReLU: the activation carries its signal). Also a layer path (`"conv1"`,
            `"backbone/conv1"`, `"block/res_conv_a"` by attribute in a subclassed model), a
            regular expression matched in full against paths, a `keras.layers.Layer`, or a
            list of these. Dense layers can be named explicitly.
        every_n_epochs: check every N epochs. Defaults to 1 when `every_n_batches` is None.
        every_n_batches: check every N training batches instead of per epoch.
        stats_data: optional larger batch (a few hundred samples) on which the statistics
            are computed, so that "dead" is judged on more than a handful of probes. The
            probes are still what is drawn. Defaults to the probes. A tuple `(x, y)` or
            `(x, y, sample_weight)` (as `fit` takes them; for a multi-input model `x` is a
            list or dict) adds labels: each check then also computes the compiled loss's
            gradient with respect to every watched output (one backward pass), logged as
            `gradient_rms/{layer}` and GraMa's `gradient_dormant_fraction/{layer}`.
        on_alert: called with each `actwatch.Alert` (on the chief only). An exception
            raised by it is logged once, with its traceback, and training goes on.
        stop_on_dead_fraction: stop training (`model.stop_training = True`) once a layer's
            fraction of confirmed dead filters reaches this value, e.g. 0.5. Defaults to None.
        dead_alert_fraction: a layer raises a dead-filter alert once at least this fraction
            of its filters is dead (a few dead filters are normal in a ReLU network).
            Defaults to 0.25.
        patience: checks in a row a filter must be dead before it counts as dead for alerts
            and stopping; raise it when filters flicker between dead and alive. Defaults to 1.
        max_filters: at most this many filters per layer are drawn (the first ones);
            statistics always cover all. Defaults to 64.
        dormant_threshold: tau of the tau-dormant test. Defaults to 0.025.
        preprocess: callable applied to probes and `stats_data` loaded from image files, e.g.
            `lambda x: x / 255.0` or `keras.applications.resnet50.preprocess_input`.
            Defaults to None (raw pixels).
        images: write filter grids and heatmaps. Defaults to True.
        draw_layers: which watched layers get pictures (statistics cover every watched
            layer): `"auto"` (every layer when there are at most 16, as in a small CNN; else
            the first one and the last one of each spatial resolution, the output of each
            stage: 5 of ResNet50's 50), `"all"`, or layer names, paths, regular expressions
            or Layers, as `layers`. Defaults to `"auto"`.
        log_per_layer: also put every layer's figures in `logs` (keys
            `actwatch_<metric>/<layer>`). Defaults to False: the progress bar prints them all.
        histograms: write every layer's activation histogram (`histogram/<layer>`, fixed
            symmetric log bins: see `actwatch.check.signals`) and, for drawn layers, the colorful
            dimension image (`distribution/<layer>`). Defaults to True.
        feature_rank: write every layer's effective rank and srank of its spatially averaged
            features (`erank/<layer>`, `srank/<layer>`), at most min(samples, channels).
            Defaults to None: only with `stats_data` (on a handful of probes the rank says
            little and costs about 1 ms a check).
        topk: for each drawn filter of each drawn layer, the `topk` statistics samples whose
            activation peaks highest, drawn as thumbnails with the peak marked
            (`topk/<layer>`); most telling with a few hundred `stats_data`. Defaults to 0
            (none: it costs PNG bytes and rendering time at every check).
        outlier_ratio: raise an `"outlier"` alert when a layer's `max |a| / median |a|` (scalar
            `outlier_ratio/<layer>`) exceeds this, e.g. 1000 (Sun et al. 2024 report about
            1000x in LLMs). Defaults to None (no outlier alerts; the scalar is always written).
        update_ratio_bounds: `(low, high)` for the update-to-weight ratio
            `||W_after - W_before|| / ||W_before||` of one training step after each check,
            logged as `update_ratio/{layer}` for every watched layer with trainable weights: a
            layer above `high` (or below `low`) for `patience` checks raises a
            `kind="learning_rate"` alert saying which way to move the learning rate.
            Defaults to `(1e-5, 1e-1)`, two orders of magnitude around the healthy 1e-3
            (CS231n notes); None measures nothing.
        revive: `"redo"` re-initialises filters dead (or tau-dormant) for `patience` checks
            (ReDo, Sokar et al. 2023): fresh incoming weights, zero bias and outgoing weights,
            so the output is unchanged at that instant; each revival is an alert of
            `kind="revived"`. Only for Conv/Dense layers feeding Conv/Dense layers through
            channel-preserving layers in a Functional or Sequential model; anything else is a
            ValueError at the start of `fit`. Defaults to None.

    Example:

    ```python
    monitor = actwatch.ActivationMonitor(probes=x_val[:4], log_dir="logs/run1",
                                         stats_data=x_val[:256])
    model.fit(x_train, y_train, epochs=20, callbacks=[monitor])
    ```
    """

    def __init__(
        self,
        probes: Any,
        log_dir: str,
        *,
        layers: Any = None,
        every_n_epochs: int | None = None,
        every_n_batches: int | None = None,
        stats_data: Any = None,
        on_alert: Callable[[Alert], Any] | None = None,
        stop_on_dead_fraction: float | None = None,
        dead_alert_fraction: float = 0.25,
        patience: int = 1,
        max_filters: int = 64,
        dormant_threshold: float = 0.025,
        preprocess: Callable[[np.ndarray], Any] | None = None,
        images: bool = True,
        draw_layers: Any = "auto",
        log_per_layer: bool = False,
        histograms: bool = True,
        feature_rank: bool | None = None,
        topk: int = 0,
        outlier_ratio: float | None = None,
        update_ratio_bounds: tuple[float, float] | None = DEFAULT_BOUNDS,
        revive: str | None = None,
    ) -> None:
        super().__init__()
        self._probe_source = read_probe_source(probes, "probes")
        self._stats_labels: tuple[Any, Any] | None = None
        if isinstance(stats_data, tuple) and len(stats_data) in (2, 3):  # (x, y[, weight])
            stats_data, *labels = stats_data
            self._stats_labels = (labels[0], labels[1] if len(labels) > 1 else None)
        self._stats_source = (
            None if stats_data is None else read_probe_source(stats_data, "stats_data")
        )
        self.log_dir = check_log_dir(log_dir)
        self.every_n_batches = positive_int("every_n_batches", every_n_batches)
        if self.every_n_batches is not None and every_n_epochs is not None:
            raise ValueError(
                "Invalid value for arguments `every_n_epochs` and `every_n_batches`: give one "
                "of them, not both. Received: every_n_epochs="
                f"{every_n_epochs!r}, every_n_batches={every_n_batches!r}"
            )
        n_epochs = positive_int("every_n_epochs", every_n_epochs)
        self.every_n_epochs = None if self.every_n_batches is not None else (n_epochs or 1)
        if on_alert is not None and not callable(on_alert):
            raise TypeError(
                "Invalid value for argument `on_alert`. Expected a callable taking an "
                f"actwatch.Alert. Received: on_alert={on_alert!r}"
            )
        check_preprocess(preprocess, [self._probe_source, self._stats_source])
        check_layer_specs(layers)
        self.layers = layers
        self.on_alert = on_alert
        self.stop_on_dead_fraction = (
            None
            if stop_on_dead_fraction is None
            else fraction(
                "stop_on_dead_fraction", stop_on_dead_fraction, low_open=True, optional=True
            )
        )
        self.patience = positive_int("patience", patience, allow_none=False) or 1
        self.dead_alert_fraction = fraction(
            "dead_alert_fraction", dead_alert_fraction, low_open=True
        )
        self.max_filters = positive_int("max_filters", max_filters, allow_none=False) or 64
        self.dormant_threshold = fraction("dormant_threshold", dormant_threshold, low_open=False)
        self.preprocess = preprocess
        self.images = flag("images", images)
        self.log_per_layer = flag("log_per_layer", log_per_layer)
        self.histograms = flag("histograms", histograms)
        self.feature_rank = (
            self._stats_source is not None
            if feature_rank is None
            else flag("feature_rank", feature_rank)
        )
        no_topk = topk == 0 and not isinstance(topk, bool)
        self.topk = 0 if no_topk else positive_int("topk", topk, allow_none=False) or 0
        self.outlier_ratio = check_outlier_ratio(outlier_ratio)
        if draw_layers is None:
            raise ValueError(
                "Invalid value for argument `draw_layers`: received None. Pass 'auto' (the "
                "default), 'all', or the layers to draw; images=False draws none."
            )
        if not (isinstance(draw_layers, str) and draw_layers in ("auto", "all")):
            check_layer_specs(draw_layers, argument="draw_layers")
        self.draw_layers = draw_layers
        self.update_ratio_bounds = _bounds(update_ratio_bounds)
        self.revive = check_revive(revive)
        if self.every_n_batches is not None:
            # Defined only on request: overriding it turns off Keras' async batch dispatch.
            self.on_train_batch_end = self._on_train_batch_end  # type: ignore[method-assign]
        self.alerts: list[Alert] = []
        self.last_stats: dict[str, LayerStats] = {}
        #: The gradient figures of the last check (with labels in `stats_data`), by layer.
        self.last_gradients: dict[str, GradientStats] = {}
        #: The update-to-weight ratios measured after the last check, by layer.
        self.last_update_ratios: dict[str, float] = {}
        self._updates = UpdateRatios([])
        self._reviver: Reviver | None = None
        self._revived_at_snapshot: set[str] = set()  # layers revived at the snapshot's check
        #: What the last check blocked the training thread for, in seconds: `blocking` (all
        #: of it), `device` (the compiled call), and `update_ratio` (the comparison of the
        #: weights, at the first batch after the check).
        self.timings: dict[str, float] = {}
        self._last_sink_stats: SinkStats | None = None
        self._sink: Sink | None = None
        #: Private: extra `Sink` arguments (priority, max_pending_bytes) for benchmarks and tests.
        self._sink_options: dict[str, Any] = {}
        self._last_step = -1
        # Alert memory: kept across fits while the model and the watched layers are the same.
        self._tracker: AlertTracker | None = None
        self._tracked: tuple[weakref.ref[Any], tuple[str, ...]] | None = None
        self._check_failed = WarnOnce("actwatch: a later check failed")
        self._gradients_failed = WarnOnce("actwatch: the gradients of activations failed")
        self._hook_failed = WarnOnce("actwatch: on_alert raised")

    # Keras hooks --------------------------------------------------------------------------

    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        model = self.model
        self._close_sink()
        self.alerts = []
        self._figures: dict[str, float] = {}
        self._epoch = 0
        self._steps = StepCounter(int(getattr(model, "steps_per_execution", 1) or 1))
        self._next_batch_check = 0  # the step at or after which the next batch check runs
        self.last_stats = {}
        self.last_gradients = {}
        self.last_update_ratios = {}
        self.timings = {}
        self._stopping = False
        self._check_failed.reset()
        self._gradients_failed.reset()
        self._hook_failed.reset()
        inputs = model_inputs(model)
        probes = prepare_probes(self._probe_source, inputs, self.preprocess)
        watched = resolve_layers(model, self.layers, probes.feed())
        self._display = probes.display
        self._samples = probes.display  # pictures of the statistics samples (top-k)
        self._histories = HistogramHistory()
        stats_samples = 0
        labels = None
        if self._stats_source is not None:  # one batch: statistics samples, then the probes
            stats = prepare_probes(self._stats_source, inputs, self.preprocess)
            stats_samples = stats.size
            self._samples = stats.display
            if self._stats_labels is not None:  # the gradients: the check's backward pass
                labels = _labels(self._stats_labels, stats.size)
            batch = tuple(
                np.concatenate([s, p]) for s, p in zip(stats.inputs, probes.inputs, strict=True)
            )
            probes = ProbeBatch(inputs=batch, display=probes.display)
        self._feed = probes.feed()
        self._pipeline = CheckPipeline(
            model,
            watched,
            stats_samples=stats_samples,
            max_filters=self.max_filters,
            dormant_threshold=self.dormant_threshold,
            draw=self.images,
            drawn=self._drawn(model, watched),
            histograms=self.histograms,
            feature_rank=self.feature_rank,
            topk=self.topk,
            labels=labels,
        )
        self._pipeline.check_labels(self._feed)  # labels the loss refuses: an error now
        paths = tuple(w.path for w in watched)
        self._remembered = (
            self._tracker is not None
            and self._tracked is not None
            and self._tracked[0]() is model
            and self._tracked[1] == paths
        )
        if not self._remembered:
            self._tracker = AlertTracker(
                patience=self.patience,
                dead_alert_fraction=self.dead_alert_fraction,
                stop_on_dead_fraction=self.stop_on_dead_fraction,
                pooling=[w.path for w in watched if w.pooling],
                outlier_ratio=self.outlier_ratio,
            )
            self._tracked = (weakref.ref(model), paths)
        self._reviver = (
            None
            if self.revive is None
            else Reviver(model, plan(model, watched), patience=self.patience)
        )
        self._updates = (
            UpdateRatios(watched, weight_sources(model, watched))
            if self.update_ratio_bounds is not None
            else UpdateRatios([])
        )
        low, high = self.update_ratio_bounds or DEFAULT_BOUNDS
        self._ratios = RatioTracker(low=low, high=high, patience=self.patience)
        self._chief = is_chief(model)
        if self._chief:
            self._sink = Sink(
                self.log_dir, layout=tags.layout([w.path for w in watched]), **self._sink_options
            )

    def on_epoch_begin(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        self._epoch = epoch
        self._steps.epoch_begin()
        if not self._steps.started:
            self._begin_fit(epoch)

    def on_train_batch_begin(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        self._measure_updates()
        self._steps.batch_begin(batch, self._steps_per_epoch())

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._steps.epoch_end(self._iterations, self._steps_per_epoch())
        if self.every_n_epochs is not None and (epoch + 1) % self.every_n_epochs == 0:
            self._check(self._steps.current, epoch=epoch)
        if logs is not None:
            logs.update(self._figures)

    def _on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        assert self.every_n_batches is not None
        step = self._steps.current
        # `>=`, not `%`: with steps_per_execution the hook sees every k-th step only.
        if step >= self._next_batch_check:
            self._next_batch_check = (step // self.every_n_batches + 1) * self.every_n_batches
            if hasattr(self.model, "jax_state_sync"):
                self.model.jax_state_sync()  # JAX keeps weights outside the model mid-epoch
            self._check(step, epoch=self._epoch)
            if logs is not None:
                logs.update(self._figures)

    def on_train_end(self, logs: Mapping[str, Any] | None = None) -> None:
        # Keras calls on_epoch_end after a stop in the middle of an epoch too, so the batches
        # counted are the ones that ran; a fit that ran no epoch has nothing to check.
        if self._steps.started:
            self._check(self._steps.current, epoch=self._epoch)
        self._updates.cancel()  # no training step after the last check
        self._close_sink()

    # Public helpers -----------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the background writer has written every check so far.

        Returns False when `timeout` (seconds) ran out first. Training never needs this; it is
        for code that reads the events file during training.
        """
        return True if self._sink is None else self._sink.flush(timeout)

    @property
    def sink_stats(self) -> SinkStats | None:
        """What the background writer did in this `fit()` (or the last one): seconds spent
        rendering, encoding and writing, bytes written, images skipped. None before a fit."""
        return self._sink.stats if self._sink is not None else self._last_sink_stats

    # Internals ----------------------------------------------------------------------------

    def _begin_fit(self, epoch: int) -> None:
        """This fit's first epoch begins: where its steps start, and the check before training.

        The start is where the model is (the optimizer's counter, or `initial_epoch` epochs
        when that is more, after a weights-only resume), never before this monitor's last
        check. Resumed with `initial_epoch`, the run that stopped there checked this state at
        its end; a monitor reused on the same model has already seen it too: no check then.
        """
        assert self._tracker is not None
        self._tracker.begin_fit(initial_epoch=epoch)
        iterations = self._iterations()
        start = max(iterations, epoch * self._steps_per_epoch(), self._last_step)
        first = epoch == 0 and (start > self._last_step or not self._remembered)
        if first and start == self._last_step:
            start += 1  # another model's first state, after this monitor's last check
        self._steps.begin(start, iterations)
        n = self.every_n_batches or 1
        self._next_batch_check = (start // n + 1) * n
        if first:
            self._check(start, epoch=None)

    def _drawn(self, model: keras.Model, watched: list[Any]) -> Any:
        """What `draw_layers` says, for the pipeline: a rule, or the paths to draw."""
        if self.draw_layers == "auto":
            return default_drawn
        if self.draw_layers == "all":
            return None
        return resolve_drawn(model, watched, self.draw_layers)

    def _steps_per_epoch(self) -> int:
        steps = (self.params or {}).get("steps")
        return int(steps) if steps else 0

    def _iterations(self) -> int:
        """The optimizer's step counter; 0 without a readable one."""
        try:
            return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        except Exception:  # no optimizer (not compiled) or an unreadable counter
            return 0

    def _learning_rate(self) -> float | None:
        try:
            return float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        except Exception:
            return None

    def _check(self, step: int, *, epoch: int | None) -> None:
        """One check: device work, alerts, `logs` figures, then hand off to the sink.

        A step at or before the last check's is not checked again: that state was seen.
        """
        if step <= self._last_step:
            return
        self._last_step = step
        try:
            assert self._tracker is not None
            start = time.perf_counter()
            ratio_scalars, ratio_alerts = self._measure_updates(submit=False)
            result = self._run_pipeline()
            device = time.perf_counter() - start
            learning_rate = self._learning_rate()
            decision = self._tracker.update(
                result.stats, step=step, epoch=epoch, learning_rate=learning_rate
            )
            self.last_stats = result.stats
            layers = {path: s.scalars() for path, s in result.stats.items()}
            network = NetworkStats.of(result.stats).scalars()
            self._figures = tags.logs_figures(network, layers if self.log_per_layer else None)
            self.last_gradients = result.gradients
            for path, g in self.last_gradients.items():
                layers[path] = {**layers[path], **g.scalars()}
            revivals = self._revive(result.stats, step, epoch, learning_rate)
            if revivals or ratio_alerts:
                decision = Decision(
                    alerts=ratio_alerts + decision.alerts + revivals,
                    stop_reason=decision.stop_reason,
                    revived=decision.revived,
                )
            if self._reviver is not None:
                network = {**network, "revived_filters": float(self._reviver.total)}
                for alert in revivals:  # on the watched row whose dead filters were revived
                    source = self._reviver.source(alert.layer)
                    layers.setdefault(source, {})["revived_filters"] = float(alert.count)
            # Before drawing; the colorful dimension's history is kept for drawn layers only.
            histograms = histogram_values(result.stats, self._histories, set(result.maps))
            # Before the hand-off: once the sink's thread renders, it holds the GIL in turns
            # with this one (5 ms slices), so host work after `submit` blocks training longer.
            self._snapshot(step)
            if self._sink is not None:
                render = functools.partial(
                    render_images,
                    maps=result.maps,
                    heat=result.heat,
                    dead={path: s.dead for path, s in result.stats.items()},
                    display=self._display,
                    distributions=self._histories.snapshot(set(result.maps)),
                    topk=result.topk,
                    samples=self._samples,
                )
                self._sink.submit(
                    step,
                    scalars={**tags.scalar_values(layers, network, learning_rate), **ratio_scalars},
                    texts=tags.alert_texts(decision.alerts),
                    render=render if self.images else None,
                    histograms=histograms,
                )
            self._act(decision)
            self.timings = {"device": device, "blocking": time.perf_counter() - start}
        except Exception as exc:
            self._check_failed(
                "actwatch: the check at step %d failed (%s: %s); training goes on. Later "
                "failures are logged at DEBUG.",
                step,
                type(exc).__name__,
                exc,
                exc=exc,
            )

    def _run_pipeline(self) -> CheckResult:
        """This check's device work. With labels, a failure there costs the gradients (the
        check runs again without them, and so does the rest of this fit), not the check."""
        try:
            return self._pipeline.run(self._feed)
        except Exception as exc:
            if not self._pipeline.gradients:
                raise
            self._pipeline.drop_gradients()
            # Rerun first: when the check fails without the gradients too, the gradients
            # were not the cause, and the check's own failure is what `_check` says.
            result = self._pipeline.run(self._feed)
            self._gradients_failed(
                "actwatch: the gradients of activations failed (%s: %s); this fit goes on "
                "without them.",
                type(exc).__name__,
                exc,
                exc=exc,
            )
            return result

    def _revive(
        self, stats: Mapping[str, LayerStats], step: int, epoch: int | None, lr: float | None
    ) -> tuple[Alert, ...]:
        """ReDo on the filters dead (or tau-dormant) for `patience` checks: one alert each."""
        if self._reviver is None:
            return ()
        masks = {p: s.dead if s.nonnegative else s.dormant for p, s in stats.items()}
        when = f"Epoch {epoch + 1} (step {step})" if epoch is not None else f"Step {step}"
        alerts = []
        revived = self._reviver.update(masks)
        self._revived_at_snapshot = set(revived)
        for path, filters in revived.items():
            total = int(stats[self._reviver.source(path)].filters)
            alerts.append(
                Alert(
                    kind="revived",
                    layer=path,
                    step=step,
                    epoch=epoch,
                    filters=filters,
                    dead_filters=filters,
                    died_since_last_check=(),
                    count=len(filters),
                    total=total,
                    fraction=len(filters) / max(total, 1),
                    learning_rate=lr,
                    message=(
                        f"{when}: revive='redo' re-initialised {len(filters)} filter(s) of "
                        f"layer '{path}' that stayed dead for {self.patience} check(s): "
                        f"[{', '.join(str(i) for i in filters[:16])}"
                        f"{', ...' if len(filters) > 16 else ''}]. Their "
                        "incoming weights are fresh, their bias and outgoing weights zero, so "
                        "the network's output is unchanged now."
                    ),
                )
            )
        return tuple(alerts)

    def _snapshot(self, step: int) -> None:
        """Copy the weights for the update ratio, after any revival (so the ratio is of one
        training step). A failure turns the ratio off for this fit, the check stands."""
        try:
            if self._updates.layers:
                self._updates.snapshot(step, self._applied_updates())
        except Exception as exc:
            self._updates = UpdateRatios([])
            self._check_failed(
                "actwatch: copying the weights for the update ratio at step %d failed (%s: %s); "
                "no update ratio in this fit, the checks go on.",
                step,
                type(exc).__name__,
                exc,
                exc=exc,
            )

    def _applied_updates(self) -> int | None:
        """How many updates the optimizer applied: its `iterations`, which a
        `LossScaleOptimizer` does not advance on a step it skips and which counts whole
        gradient-accumulation cycles; None without a readable counter."""
        try:
            return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        except Exception:  # no optimizer (not compiled) or an unreadable counter
            return None

    def _measure_updates(
        self, *, submit: bool = True
    ) -> tuple[dict[str, tuple[float, str]], tuple[Alert, ...]]:
        """The update-to-weight ratios, once a training step has run since the last check:
        their scalars and alerts, written and acted on at once with `submit` (from a batch
        hook), else returned for the check at this step to write with its own."""
        if not (self._updates.pending and self._steps.started):
            return {}, ()
        assert self._updates.step is not None
        step = self._steps.current
        if step <= self._updates.step:
            return {}, ()
        scalars: dict[str, tuple[float, str]] = {}
        alerts: tuple[Alert, ...] = ()
        try:
            if hasattr(self.model, "jax_state_sync"):
                self.model.jax_state_sync()  # JAX keeps weights outside the model mid-epoch
            applied = self._applied_updates()
            if applied is not None and self._updates.updates is not None:
                moved = applied - self._updates.updates
                if moved <= 0:  # a skipped or gradient-accumulation step: wait for an update
                    return {}, ()
                if moved > self._steps.per_execution:  # more than one execution: no ratio
                    self._updates.cancel()
                    return {}, ()
            elif step - self._updates.step > self._steps.per_execution:
                self._updates.cancel()  # batches ran without a batch hook: not one step
                return {}, ()
            start = time.perf_counter()
            ratios = self._updates.measure()
            # The last check's timings gain the measurement, taken at the batch after it.
            self.timings["update_ratio"] = time.perf_counter() - start
            self.last_update_ratios = ratios
            learning_rate = self._learning_rate()
            alerts = tuple(
                self._ratios.update(
                    ratios,
                    step=step,
                    epoch=self._epoch,
                    learning_rate=learning_rate,
                    revived=self._revived_at_snapshot,
                )
            )
            about = tags.LEARNING_METRICS["update_ratio"]
            for path, value in ratios.items():
                scalars[tags.layer_tag("update_ratio", path)] = (value, f"{about} Layer `{path}`.")
            if ratios:
                scalars[tags.network_tag("update_ratio")] = (
                    float(np.median(list(ratios.values()))),
                    f"{about} Median over the watched layers.",
                )
            if submit:
                if self._sink is not None and scalars:
                    self._sink.submit(step, scalars=scalars, texts=tags.alert_texts(alerts))
                self._act(Decision(alerts=alerts, stop_reason=None))
        except Exception as exc:
            self._check_failed(
                "actwatch: the update ratio at step %d failed (%s: %s); training goes on.",
                step,
                type(exc).__name__,
                exc,
                exc=exc,
            )
            return {}, ()
        return scalars, alerts

    def _act(self, decision: Decision) -> None:
        if self._chief:
            for path, filters in decision.revived.items():
                logger.info("actwatch: layer '%s': filters %s revived.", path, list(filters))
            for alert in decision.alerts:
                self.alerts.append(alert)
                logger.warning("actwatch: %s", alert.message)
                if self.on_alert is not None:
                    try:
                        self.on_alert(alert)
                    except Exception as exc:
                        self._hook_failed(
                            "actwatch: on_alert raised %s: %s; training goes on. Later "
                            "errors of the hook are logged at DEBUG.",
                            type(exc).__name__,
                            exc,
                            exc=exc,
                        )
        if decision.stop_reason is not None:
            if self._chief and not self._stopping:  # said once per fit
                logger.warning("actwatch: stopping training: %s.", decision.stop_reason)
            self._stopping = True
            self.model.stop_training = True

    def _close_sink(self) -> None:
        if self._sink is not None:
            self._sink.close()
            self._last_sink_stats = self._sink.stats
            self._sink = None


def _bounds(value: Any) -> tuple[float, float] | None:
    """`update_ratio_bounds`: None, or `(low, high)` with `0 <= low < high`."""
    if value is None:
        return None
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        low = high = float("nan")
    if not (0 <= low < high < float("inf")):
        raise ValueError(
            "Invalid value for argument `update_ratio_bounds`. Expected None or (low, high) "
            f"with 0 <= low < high, e.g. (1e-5, 1e-1). Received: update_ratio_bounds={value!r}"
        )
    return (low, high)


def _labels(labels: tuple[Any, Any], size: int) -> tuple[Any, Any]:
    """`(y, sample_weight)` of `stats_data=(x, y[, sample_weight])`, checked against x."""
    y, weight = labels
    y = keras.tree.map_structure(np.asarray, y)
    for name, value in (("y", y), ("sample_weight", weight)):
        for leaf in keras.tree.flatten(value) if value is not None else []:
            length = np.shape(leaf)[0] if np.ndim(leaf) else None
            if length != size:
                raise ValueError(
                    f"Invalid value for argument `stats_data`: {name} has {length} samples "
                    f"but x has {size}. Pass `stats_data=(x, y)` or `(x, y, sample_weight)` "
                    "with one label (and weight) per sample of x."
                )
    return y, None if weight is None else np.asarray(weight)
