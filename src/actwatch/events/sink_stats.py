"""`SinkStats`: what the background writer (`actwatch.events.sink.Sink`) did, for benchmarks,
tests and `ActivationMonitor.sink_stats`."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["SinkStats"]


@dataclass
class SinkStats:
    """Running figures about what the sink did (read them for benchmarks and tests).

    `image_checks` counts the checks submitted with images, `images_skipped` those of them
    whose images were not written, `images_written_at_close` the last check when its images
    were skipped at first and written when the sink closed (0 or 1).
    """

    checks: int = 0
    bytes_written: int = 0
    images_written: int = 0
    image_checks: int = 0
    images_skipped: int = 0
    images_written_at_close: int = 0
    render_seconds: float = 0.0
    encode_seconds: float = 0.0
    write_seconds: float = 0.0
    errors: int = 0
    last_check: dict[str, float] = field(default_factory=dict)
