"""One `fit()` of the monitor: the probes, the check's pipeline, the writer, and each check.

`ActivationMonitor` wires Keras' hooks to a `FitSession`, made anew at every `on_train_begin`.
The session turns a check into device work (`actwatch.check`), decisions
(`actwatch.diagnose`) and summaries for the background writer (`actwatch.events`), and acts
on the decisions: log, `on_alert`, stop. What a monitor keeps across fits (its alert memory,
its last step) is a `Memory`; what it shows its user about the current fit is a `FitRecord`.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np

from actwatch._logging import logger
from actwatch.check.images import default_drawn, render_images
from actwatch.check.layers import WatchedLayer, resolve_drawn, resolve_layers
from actwatch.check.network import NetworkStats
from actwatch.check.pipeline import CheckPipeline, CheckResult
from actwatch.check.probes import ProbeBatch, model_inputs, prepare_probes
from actwatch.check.stats import LayerStats
from actwatch.check.text_probes import padding_lengths, structured_feed, token_labels
from actwatch.check.token_images import render_token_images
from actwatch.diagnose import alerts as wording
from actwatch.diagnose.alerts import Alert, Decision
from actwatch.diagnose.memory import AlertTracker
from actwatch.diagnose.revive import Reviver, plan
from actwatch.diagnose.updates import UpdateRatios
from actwatch.events import tags
from actwatch.events.histograms import HistogramHistory, histogram_values
from actwatch.events.log_dir import claim_log_dir
from actwatch.events.sink import Sink
from actwatch.fit.args import Settings, labels
from actwatch.fit.curvature import CurvatureWatch
from actwatch.fit.distribute import is_chief
from actwatch.fit.ratios import UpdateWatch
from actwatch.fit.record import Failures, FitRecord, Memory
from actwatch.fit.steps import StepCounter
from actwatch.fit.trial import run_head

__all__ = ["FitSession"]


class FitSession:
    """Everything one `fit()` needs: built at `on_train_begin`, closed at `on_train_end`."""

    def __init__(
        self,
        model: keras.Model,
        settings: Settings,
        *,
        memory: Memory,
        record: FitRecord,
        failures: Failures,
        sink_options: Mapping[str, Any],
    ) -> None:
        self.model, self.settings, self.memory = model, settings, memory
        self.record, self.failures = record, failures
        self.epoch = 0
        self.steps = StepCounter(int(getattr(model, "steps_per_execution", 1) or 1))
        self.stopping = False
        inputs = model_inputs(model)
        probes = prepare_probes(settings.probe_source, inputs, settings.preprocess)
        self.labels = token_labels(probes, inputs.names, settings.vocabulary)  # text models
        self.lengths = padding_lengths(probes, inputs.names)
        watched = resolve_layers(model, settings.layers, structured_feed(model, probes, inputs))
        self.display = self.samples = probes.display  # samples: pictures for the top-k
        self.histories = HistogramHistory()
        stats_samples, given = 0, None
        if settings.stats_source is not None:  # one batch: statistics samples, then probes
            stats = prepare_probes(settings.stats_source, inputs, settings.preprocess)
            stats_samples, self.samples = stats.size, stats.display
            if settings.stats_labels is not None:  # the gradients: the check's backward pass
                given = labels(settings.stats_labels, stats.size)
            batch = tuple(
                np.concatenate([s, p]) for s, p in zip(stats.inputs, probes.inputs, strict=True)
            )
            probes = ProbeBatch(inputs=batch, display=probes.display)
        self.feed = probes.feed()
        self.pipeline = CheckPipeline(
            model,
            watched,
            stats_samples=stats_samples,
            max_filters=settings.max_filters,
            dormant_threshold=settings.dormant_threshold,
            draw=settings.images,
            drawn=self._drawn(watched),
            histograms=settings.histograms,
            feature_rank=settings.feature_rank,
            topk=settings.topk,
            labels=given,
        )
        self.pipeline.check_labels(self.feed)  # labels the loss refuses: an error now
        self.curvature = None  # sharpness=True needs labels (`args` checks it)
        if settings.sharpness and given is not None:
            self.curvature = CurvatureWatch(model, self.feed, given, record, failures)
        self.remembered = memory.remember(model, watched, settings)
        self.reviver = (
            None
            if settings.revive is None
            else Reviver(model, plan(model, watched), patience=settings.patience)
        )
        self.revived_at_snapshot: set[str] = set()  # layers revived at the snapshot's check
        self.watch = UpdateWatch(model, settings, watched, record, self.steps, self.applied_updates)
        self.chief, self.layout = is_chief(model), tags.layout([w.path for w in watched])
        self.sink_options = {**sink_options, "head": run_head(model, settings.hparams)}
        self.sink: Sink | None = None  # opened where the fit's steps start (`begin`)

    @property
    def updates(self) -> UpdateRatios:
        return self.watch.updates

    @property
    def tracker(self) -> AlertTracker:
        assert self.memory.tracker is not None
        return self.memory.tracker

    def _drawn(self, watched: list[WatchedLayer]) -> Any:
        """What `draw_layers` says, for the pipeline: a rule, or the paths to draw."""
        spec = self.settings.draw_layers
        if spec == "auto":
            return default_drawn
        return None if spec == "all" else resolve_drawn(self.model, watched, spec)

    # Steps --------------------------------------------------------------------------------

    def steps_per_epoch(self, params: Mapping[str, Any] | None) -> int:
        steps = (params or {}).get("steps")
        return int(steps) if steps else 0

    def iterations(self) -> int:
        """The optimizer's step counter; 0 without a readable one."""
        return self.applied_updates() or 0

    def applied_updates(self) -> int | None:
        """How many updates the optimizer applied: its `iterations`, which a
        `LossScaleOptimizer` does not advance on a step it skips and which counts whole
        gradient-accumulation cycles; None without a readable counter."""
        try:
            return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        except Exception:  # no optimizer (not compiled) or an unreadable counter
            return None

    def learning_rate(self) -> float | None:
        try:
            return float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        except Exception:
            return None

    def begin(self, epoch: int, steps_per_epoch: int) -> int | None:
        """This fit's first epoch begins: where its steps start; returns the step to check
        before training, or None.

        The start is where the model is (the optimizer's counter, or `initial_epoch` epochs
        when that is more, after a weights-only resume), never before this monitor's last
        check. Resumed with `initial_epoch`, the run that stopped there checked this state at
        its end; a monitor reused on the same model has already seen it too: no check then.
        """
        self.tracker.begin_fit(initial_epoch=epoch)
        iterations = self.iterations()
        last = self.memory.last_step
        start = max(iterations, epoch * steps_per_epoch, last)
        first = epoch == 0 and (start > last or not self.remembered)
        if first and start == last:
            start += 1  # another model's first state, after this monitor's last check
        self.steps.begin(start, iterations)
        if self.chief:  # a monitor's first fit claims a directory no other run holds
            memory, s = self.memory, self.settings
            if memory.run_dir is None:
                written = start if first else start + 1  # the first step this fit writes
                memory.run_dir = claim_log_dir(s.log_dir, written, s.storage_options)
            self.sink = Sink(memory.run_dir, layout=self.layout, **s.storage, **self.sink_options)
            self.record.run_dir = memory.run_dir
        return start if first else None

    # A check ------------------------------------------------------------------------------

    def check(self, step: int, *, epoch: int | None) -> None:
        """One check: device work, alerts, `logs` figures, then hand off to the writer.

        A step at or before the last check's is not checked again: that state was seen.
        """
        if step <= self.memory.last_step:
            return
        self.memory.last_step = step
        record, s = self.record, self.settings
        try:
            start = time.perf_counter()
            ratio_scalars, ratio_alerts = self.measure_updates(submit=False)
            result = self._run_pipeline()
            device = time.perf_counter() - start
            learning_rate = self.learning_rate()
            decision = self.tracker.update(
                result.stats, step=step, epoch=epoch, learning_rate=learning_rate
            )
            record.last_stats = result.stats
            layers = {path: st.scalars() for path, st in result.stats.items()}
            network = NetworkStats.of(result.stats).scalars()
            if self.curvature is not None:  # opt-in: tens of Hessian-vector products
                network.update(self.curvature.measure(step, learning_rate))
            record.figures = tags.logs_figures(network, layers if s.log_per_layer else None)
            record.last_gradients = result.gradients
            for path, g in result.gradients.items():
                layers[path] = {**layers[path], **g.scalars()}
            revivals = self._revive(result.stats, step, epoch, learning_rate)
            if revivals or ratio_alerts:
                decision = Decision(
                    alerts=ratio_alerts + decision.alerts + revivals,
                    stop_reason=decision.stop_reason,
                    revived=decision.revived,
                )
            if self.reviver is not None:
                network = {**network, "revived_filters": float(self.reviver.total)}
                for alert in revivals:  # on the watched row whose dead filters were revived
                    source = self.reviver.source(alert.layer)
                    layers.setdefault(source, {})["revived_filters"] = float(alert.count)
            # Before drawing; the colorful dimension's history is kept for drawn layers only.
            histograms = histogram_values(result.stats, self.histories, set(result.maps))
            # Before the hand-off: once the writer's thread renders, it holds the GIL in turns
            # with this one (5 ms slices), so host work after `submit` blocks training longer.
            self._snapshot(step)
            if self.sink is not None:
                self.sink.submit(
                    step,
                    scalars={**tags.scalar_values(layers, network, learning_rate), **ratio_scalars},
                    texts=tags.alert_texts(decision.alerts),
                    render=self._render(result) if s.images else None,
                    histograms=histograms,
                )
            self.act(decision)
            record.timings = {"device": device, "blocking": time.perf_counter() - start}
            if record.last_sharpness is not None:
                record.timings["sharpness"] = record.last_sharpness.seconds
        except Exception as exc:
            self.failures.check(
                "actwatch: the check at step %d failed (%s: %s); training goes on. Later "
                "failures are logged at DEBUG.",
                step,
                type(exc).__name__,
                exc,
                exc=exc,
            )

    def _render(self, result: CheckResult) -> Any:
        """The check's pictures, drawn later on the writer's thread."""
        pictures = functools.partial(
            render_token_images,
            tokens=result.tokens,
            display=self.display,
            labels=self.labels,
            lengths=self.lengths,
        )
        images = functools.partial(
            render_images,
            maps=result.maps,
            heat=result.heat,
            dead={path: s.dead for path, s in result.stats.items()},
            display=self.display,
            distributions=self.histories.snapshot(set(result.maps)),
            topk=result.topk,
            samples=self.samples,
        )
        return lambda: {**images(), **pictures()}

    def _run_pipeline(self) -> CheckResult:
        """This check's device work. With labels, a failure there costs the gradients (the
        check runs again without them, and so does the rest of this fit), not the check."""
        try:
            return self.pipeline.run(self.feed)
        except Exception as exc:
            if not self.pipeline.gradients:
                raise
            self.pipeline.drop_gradients()
            # Rerun first: when the check fails without the gradients too, the gradients
            # were not the cause, and the check's own failure is what `check` says.
            result = self.pipeline.run(self.feed)
            self.failures.gradients(
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
        if self.reviver is None:
            return ()
        masks = {p: s.dead if s.nonnegative else s.dormant for p, s in stats.items()}
        revived = self.reviver.update(masks)
        self.revived_at_snapshot = set(revived)
        totals = {path: int(stats[self.reviver.source(path)].filters) for path in revived}
        return wording.revived(
            revived,
            totals,
            patience=self.settings.patience,
            step=step,
            epoch=epoch,
            learning_rate=lr,
        )

    # Update ratios ------------------------------------------------------------------------

    def _snapshot(self, step: int) -> None:
        """Copy the weights for the update ratio, after any revival (so the ratio is of one
        training step). A failure turns the ratio off for this fit, the check stands."""
        try:
            self.watch.snapshot(step, self.applied_updates())
        except Exception as exc:
            self.watch.off()
            self.failures.check(
                "actwatch: copying the weights for the update ratio at step %d failed (%s: %s); "
                "no update ratio in this fit, the checks go on.",
                step,
                type(exc).__name__,
                exc,
                exc=exc,
            )

    def measure_updates(
        self, *, submit: bool = True
    ) -> tuple[dict[str, tuple[float, str]], tuple[Alert, ...]]:
        """The update-to-weight ratios once a training step ran since the last check (or a
        verdict that waited for a loss reading): their scalars and alerts, written and acted on
        with `submit` (from a batch's begin hook), else returned for the check to write."""
        if not self.steps.started:
            return {}, ()
        step = self.steps.current
        try:
            found = self.watch.measure(self.epoch, self.revived_at_snapshot, begin=submit)
            if found is None:
                return {}, ()
            scalars, alerts = tags.update_ratio_scalars(found[0]), tuple(found[1])
            if submit:
                if self.sink is not None and (scalars or alerts):
                    self.sink.submit(step, scalars=scalars, texts=tags.alert_texts(alerts))
                self.act(Decision(alerts=alerts, stop_reason=None))
        except Exception as exc:
            self.failures.check(
                "actwatch: the update ratio at step %d failed (%s: %s); training goes on.",
                step,
                type(exc).__name__,
                exc,
                exc=exc,
            )
            return {}, ()
        return scalars, alerts

    def observe(
        self, logs: Mapping[str, Any] | None, params: Mapping[str, Any] | None, *, batch: int = -1
    ) -> None:
        """A batch's end (`batch`, with batch checks) or an epoch's end: count the batches that
        ran (`StepCounter`), and keep the loss Keras reports in `logs` for the verdicts."""
        if batch >= 0:
            self.steps.batch_end(batch, self.steps_per_epoch(params))
        else:
            stopped = bool(getattr(self.model, "stop_training", False))
            self.steps.epoch_end(self.iterations, self.steps_per_epoch(params), stopped=stopped)
        self.watch.observe_loss(self.steps.current, logs, epoch_end=batch < 0)

    # Acting on decisions ------------------------------------------------------------------

    def act(self, decision: Decision) -> None:
        """Log the alerts, pass them to `on_alert` (on the chief), stop when decided."""
        if self.chief:
            for path, filters in decision.revived.items():
                logger.info("actwatch: layer '%s': filters %s revived.", path, list(filters))
            for alert in decision.alerts:
                self.record.alerts.append(alert)
                logger.warning("actwatch: %s", alert.message)
                if self.settings.on_alert is not None:
                    try:
                        self.settings.on_alert(alert)
                    except Exception as exc:
                        self.failures.hook(
                            "actwatch: on_alert raised %s: %s; training goes on. Later "
                            "errors of the hook are logged at DEBUG.",
                            type(exc).__name__,
                            exc,
                            exc=exc,
                        )
        if decision.stop_reason is not None:
            if self.chief and not self.stopping:  # said once per fit
                logger.warning("actwatch: stopping training: %s.", decision.stop_reason)
            self.stopping = True
            self.model.stop_training = True

    def close(self) -> None:
        """No training step after the last check; the writer finishes and closes."""
        self.updates.cancel()
        if self.sink is not None:
            self.sink.close()
