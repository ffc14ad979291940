"""`ActivationMonitor`: the Keras callback; its hooks hand each fit and check to a session."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import keras
import numpy as np

from actwatch.diagnose.alerts import Alert
from actwatch.diagnose.updates import DEFAULT_BOUNDS
from actwatch.events.sink import SinkStats
from actwatch.fit.args import ARGUMENTS, Settings, given, revised, settings
from actwatch.fit.record import Failures, FitRecord, Memory
from actwatch.fit.session import FitSession

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

    Checks: one before the first batch (none when resuming with `initial_epoch`), then every
    `every_n_epochs` epochs (or `every_n_batches` batches), and one at the end of training if
    the last state was not checked. The TensorBoard step of a check is the number of training
    batches run so far, from where the model started; it never goes backwards across fits.
    A monitor reused on the same model and layers keeps its alert memory: filters alerted in
    one fit are not alerted again in the next unless they revive and die again.

    Args:
        probes: the images to draw: a numpy batch `(n, height, width, channels)`, a list of
            image paths or PIL images (resized to the model's input size; raw 0-255 pixels,
            see `preprocess`), or for multi-input models a dict by input name or a list of
            arrays. A handful (4-8) is plenty.
        log_dir: directory for the events file (created; see `run_dir`), or an fsspec URL
            (`s3://b/run`, ...; `storage_options`: fsspec's; uploads every `upload_interval` s).
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
            stage: 5 of ResNet50's 50; of a transformer's, the first and last attention and
            block), `"all"`, or names, paths, regexes or Layers. Defaults to `"auto"`.
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
        update_ratio_bounds: `(low, high)` for the update-to-weight ratio `||dW|| / ||W||`
            of the training step after each check (`update_ratio/{layer}`). Out of bounds
            for `patience` checks, it raises a `kind="learning_rate"` verdict: above `high`,
            too high; below `low`, too low only when the loss shows the rate holds training
            back. Defaults to `(1e-5, 1e-1)`, around the healthy 1e-3; None measures nothing.
        sharpness: with labelled `stats_data`, also the loss Hessian's top eigenvalue against
            the optimizer's stability edge (2/lr for SGD; `network/sharpness`,
            `network/sharpness_x_lr`, `network/preconditioned_sharpness` for Adam), used by
            the verdicts. Tens of Hessian-vector products a check. Defaults to False.
        revive: `"redo"` re-initialises filters dead (or tau-dormant) for `patience` checks
            (ReDo, Sokar et al. 2023): fresh incoming weights, zero bias and outgoing weights,
            so the output is unchanged at that instant; each revival is an alert of
            `kind="revived"`. Only for Conv/Dense layers feeding Conv/Dense layers through
            channel-preserving layers in a Functional or Sequential model; anything else is a
            ValueError at the start of `fit`. Defaults to None.
        hparams: more hyperparameters for TensorBoard's HParams tab, e.g. `{"dropout": 0.1}`.

    Attributes:
        alerts: the `actwatch.Alert`s of the current (or last) fit.
        last_stats: the last check's `actwatch.LayerStats`, by layer path.
        last_gradients: the last check's gradient figures by layer path (labels in `stats_data`).
        last_update_ratios: the update-to-weight ratios measured after the last check.
        timings: what the last check blocked the training thread for, in seconds: `blocking`
            (all of it), `device` (the compiled call) and `update_ratio` (the comparison of
            the weights, at the first batch after the check).
        run_dir: where this monitor writes: `log_dir`, or `<log_dir>-2`, ... when it held
            another run's events (said at WARNING; claimed at the first fit; None before).
        last_sharpness: the last check's `SharpnessResult` (with `sharpness=True`), or None.

    Example:

    ```python
    monitor = actwatch.ActivationMonitor(x_val[:4], "logs/run1", stats_data=x_val[:256])
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
        sharpness: bool = False,
        revive: str | None = None,
        hparams: Mapping[str, Any] | None = None,
        storage_options: Mapping[str, Any] | None = None,
        upload_interval: float = 30.0,
    ) -> None:
        super().__init__()
        self.settings: Settings = settings(**given(locals()))
        self._memory = Memory()  # alert memory and the last step, across fits
        self._record, self._failures = FitRecord(), Failures()
        self._session: FitSession | None = None
        self._last_sink_stats: SinkStats | None = None
        #: Private: extra `Sink` arguments (priority, max_pending_bytes) for benchmarks and tests.
        self._sink_options: dict[str, Any] = {}
        self._check_failed, self._gradients_failed = self._failures.check, self._failures.gradients
        self._hooks()

    def __setattr__(self, name: str, value: Any) -> None:
        """An argument set as an attribute (`monitor.images = False`) is checked again as the
        constructor checks it (the same ValueError or TypeError) and takes effect at the
        next fit; a new `log_dir` is claimed then, as a new monitor's."""
        if name not in ARGUMENTS or "settings" not in self.__dict__:
            super().__setattr__(name, value)
            return
        old, self.__dict__["settings"] = self.settings, revised(self.settings, name, value)
        if self.settings.log_dir != old.log_dir:
            self._memory.run_dir = None
        if self._session is None:
            self._hooks()

    def _hooks(self) -> None:
        """`on_train_batch_end` only with `every_n_batches`: defining it turns off Keras'
        asynchronous batch dispatch."""
        if self.settings.every_n_batches is not None:
            self.__dict__["on_train_batch_end"] = self._on_train_batch_end
        else:
            self.__dict__.pop("on_train_batch_end", None)

    def __getattr__(self, name: str) -> Any:
        """The last fit's record (see Attributes) and the arguments (`monitor.patience`)."""
        record, held = self.__dict__.get("_record"), self.__dict__.get("settings")
        for value in (record, held):
            if value is not None and name in type(value).__dataclass_fields__:
                return getattr(value, name)
        if held is not None and name in held.arguments:  # probes, stats_data: as given
            return held.arguments[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def sink_stats(self) -> SinkStats | None:
        """What the background writer did in this `fit()` (or the last one): seconds spent
        rendering, encoding and writing, bytes written, images skipped. None before a fit."""
        if self._session is not None and self._session.sink is not None:
            return self._session.sink.stats
        return self._last_sink_stats

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the background writer has written every check so far.

        Returns False when `timeout` (seconds) ran out first. Training never needs this; it is
        for code that reads the events file during training.
        """
        session = self._session
        return True if session is None or session.sink is None else session.sink.flush(timeout)

    # Keras hooks --------------------------------------------------------------------------

    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        self._close()
        self._record = FitRecord()
        self._failures.reset()
        self._session = FitSession(
            self.model,
            self.settings,
            memory=self._memory,
            record=self._record,
            failures=self._failures,
            sink_options=self._sink_options,
        )

    def on_epoch_begin(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        session = self._live()
        session.epoch = epoch
        session.steps.epoch_begin()
        if not session.steps.started:
            first = session.begin(epoch, session.steps_per_epoch(self.params))
            n = session.settings.every_n_batches or 1
            start = session.steps.current
            self._next_batch_check = (start // n + 1) * n  # the step of the next batch check
            if first is not None:
                session.check(first, epoch=None)

    def on_train_batch_begin(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        session = self._live()
        session.measure_updates()
        session.steps.batch_begin(batch, session.steps_per_epoch(self.params))

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        session = self._live()
        session.observe(logs, self.params)  # the batches that ran, and the loss
        every = session.settings.every_n_epochs
        if every is not None and (epoch + 1) % every == 0:
            session.check(session.steps.current, epoch=epoch)
        if logs is not None:
            logs.update(self._record.figures)

    def _on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        session = self._live()
        every = session.settings.every_n_batches
        if every is None:  # set during this fit: from the next one
            return
        session.observe(logs, self.params, batch=batch)
        step = session.steps.current
        # `>=`, not `%`: with steps_per_execution the hook sees every k-th step only.
        if step >= self._next_batch_check:
            self._next_batch_check = (step // every + 1) * every
            if hasattr(self.model, "jax_state_sync"):
                self.model.jax_state_sync()  # JAX keeps weights outside the model mid-epoch
            session.check(step, epoch=session.epoch)
            if logs is not None:
                logs.update(self._record.figures)

    def on_train_end(self, logs: Mapping[str, Any] | None = None) -> None:
        # Keras calls on_epoch_end after a stop in the middle of an epoch too, so the batches
        # counted are the ones that ran; a fit that ran no epoch has nothing to check.
        session = self._live()
        if session.steps.started:
            session.check(session.steps.current, epoch=session.epoch)
        self._close()

    def _live(self) -> FitSession:
        assert self._session is not None, "on_train_begin has not run"
        return self._session

    def _close(self) -> None:
        self._hooks()
        if self._session is not None:
            self._session.close()
            if self._session.sink is not None:
                self._last_sink_stats = self._session.sink.stats
            self._session = None
