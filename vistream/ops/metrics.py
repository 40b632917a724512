"""Prometheus metrics, computed at scrape time from what the daemon shows (`StatusSource`).

A custom collector on a registry of our own (nothing registered at import):
reader counters come from copies of the rings' headers, scheduler figures
from its latest cumulative snapshot, the rest from the main process's `Figures`.
Label `camera` is always the camera's name, never its URL.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, make_asgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from vistream.ops.stats import DROP_REASONS, Buckets
from vistream.outputs.writer import DROP_REASONS as DROP_REASONS_WRITER

if TYPE_CHECKING:
    from vistream.ops.http import HttpServer
    from vistream.ops.status import CameraStatus, Figures, StatusSource


def _histogram(name: str, doc: str, b: Buckets) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, buckets=b.cumulative(), sum_value=b.sum)


class DaemonCollector(Collector):
    def __init__(self, daemon: StatusSource) -> None:
        self.daemon = daemon

    def collect(self) -> Iterator[Metric]:
        d = self.daemon
        stats = d.scheduler_stats()
        latency, _, _ = d.pipeline()
        fig = d.figures()

        decoded = CounterMetricFamily(
            "vistream_frames_decoded", "Frames decoded by the camera's reader.", labels=["camera"]
        )
        sampled = CounterMetricFamily(
            "vistream_frames_sampled",
            "Frames kept at detect_fps and handed to the scheduler.",
            labels=["camera"],
        )
        inferred = CounterMetricFamily(
            "vistream_frames_inferred", "Frames the model ran on.", labels=["camera"]
        )
        dropped = CounterMetricFamily(
            "vistream_frames_dropped",
            "Sampled frames never inferred: stale (older than max_frame_age_ms at batch time), overwritten "
            "(replaced by a newer frame first), failed (their batch raised), unattached (written while no "
            "scheduler was attached: model loading, a restart), reshape (letterboxed for a batch shape the "
            "model had just left), backend (a remote backend, Triton, was down or did not answer in time).",
            labels=["camera", "reason"],
        )
        skipped = CounterMetricFamily(
            "vistream_frames_skipped",
            "Sampled frames not inferred by design, not dropped: no_motion (motion gating).",
            labels=["camera", "reason"],
        )
        up = GaugeMetricFamily("vistream_camera_up", "1 while the camera delivers frames.", labels=["camera"])
        reconnects = CounterMetricFamily(
            "vistream_camera_reconnects", "Reconnects to the camera.", labels=["camera"]
        )
        torn = CounterMetricFamily(
            "vistream_ring_torn_reads",
            "Ring reads retried because the writer lapped them.",
            labels=["camera"],
        )
        deferred = CounterMetricFamily(
            "vistream_frames_deferred",
            "Frames kept at detect_fps that the reader did not letterbox: the model was busy and a newer "
            "frame would come before it was free (not in sampled).",
            labels=["camera"],
        )
        late = CounterMetricFamily(
            "vistream_frames_late",
            "Inferred frames older than max_frame_age_ms when their batch ended (it ran long).",
            labels=["camera"],
        )
        failed = GaugeMetricFamily(
            "vistream_camera_failed",
            "1 while the camera could not be started (no room for its ring in /dev/shm); retried at every "
            "reload and every 10 s.",
            labels=["camera"],
        )
        cameras = d.camera_status()  # ring headers copied under their leases: never a closed ring
        for cam in cameras:
            name = cam.name
            c = stats.cameras.get(name)
            decoded.add_metric([name], cam.field("frames_decoded"))
            sampled.add_metric([name], cam.field("head"))
            deferred.add_metric([name], cam.field("deferred"))
            up.add_metric([name], 1.0 if cam.online else 0.0)
            failed.add_metric([name], 1.0 if cam.failed else 0.0)
            reconnects.add_metric([name], cam.field("reconnects"))
            inferred.add_metric([name], c.inferred if c else 0)
            for reason in DROP_REASONS:
                dropped.add_metric([name, reason], getattr(c, reason) if c else 0)
            skipped.add_metric([name, "no_motion"], c.skipped_no_motion if c else 0)
            torn.add_metric([name], c.torn if c else 0)
            late.add_metric([name], c.late if c else 0)
        yield from (decoded, sampled, deferred, inferred, dropped, skipped, up, failed, reconnects)
        yield from (torn, late)
        refused = CounterMetricFamily(
            "vistream_streams_refused",
            "Sessions the reader ended because the stream was unsafe to decode: too_large (frames over the "
            "camera's max_pixels, known from the codec parameters before decoding or from a frame), memory "
            "(the reader's memory_limit_mb reached). Logged once per run of refusals.",
            labels=["camera", "reason"],
        )
        for cam in cameras:
            for reason in ("too_large", "memory"):
                refused.add_metric([cam.name, reason], cam.field(f"refused_{reason}"))
        yield refused

        yield _histogram("vistream_batch_size", "Frames per inference call.", stats.batch_size)
        yield _histogram(
            "vistream_inference_seconds", "Duration of one inference call, NMS included.", stats.inference_s
        )
        yield _histogram("vistream_frame_age_seconds", "Capture to batch start.", stats.frame_age_s)
        yield _histogram(
            "vistream_result_frame_age_seconds", "Capture to the end of its batch.", stats.result_age_s
        )
        shape = GaugeMetricFamily(
            "vistream_batch_shape",
            "The model input batches are letterboxed to, in pixels (fitted to the cameras unless model.imgsz "
            "is [height, width]).",
            labels=["side"],
        )
        for side, value in zip(("height", "width"), stats.batch_shape, strict=True):
            shape.add_metric([side], value)
        yield shape
        yield _histogram("vistream_e2e_latency_seconds", "Capture to MQTT publish.", latency)

        connected = GaugeMetricFamily("vistream_mqtt_connected", "1 while connected to the MQTT broker.")
        connected.add_metric([], 1.0 if fig.mqtt_connected else 0.0)
        yield connected
        mqtt_dropped = CounterMetricFamily(
            "vistream_mqtt_dropped",
            "Messages that could not be handed to the broker, by kind and why: disconnected, backlog (too "
            "many waiting unwritten in the client's buffer), refused.",
            labels=["kind", "reason"],
        )
        by_reason = {("detections", "disconnected"): 0, **fig.mqtt_dropped}
        for (kind, reason), n in sorted(by_reason.items()):
            mqtt_dropped.add_metric([kind, reason], n)
        yield mqtt_dropped
        overflow = CounterMetricFamily(
            "vistream_results_overflow", "Frame results dropped because the hand-off to MQTT was full."
        )
        overflow.add_metric([], stats.results_overflow)
        yield overflow
        abandoned = CounterMetricFamily(
            "vistream_results_abandoned",
            "Frame results left unread in the queue of a scheduler that was replaced.",
        )
        abandoned.add_metric([], fig.results_abandoned)
        yield abandoned
        errors = CounterMetricFamily("vistream_inference_errors", "Inference calls that raised.")
        errors.add_metric([], stats.inference_errors)
        yield errors

        restarts = CounterMetricFamily(
            "vistream_process_restarts",
            "Child processes restarted after dying or hanging, and threads of the daemon found dead.",
            labels=["process"],
        )
        restarts.add_metric(["scheduler"], fig.scheduler_restarts)
        for cam in cameras:
            restarts.add_metric([f"reader/{cam.name}"], cam.restarts)
        for name, n in fig.thread_restarts.items():
            restarts.add_metric([f"thread/{name}"], n)
        yield restarts
        spawn = CounterMetricFamily(
            "vistream_spawn_failures",
            "Child processes that could not be made (out of file descriptors, memory or processes); "
            "each is tried again with a backoff, the daemon runs on.",
            labels=["process"],
        )
        spawn.add_metric(["scheduler"], fig.scheduler_spawn_failures)
        for cam in cameras:
            spawn.add_metric([f"reader/{cam.name}"], cam.spawn_failures)
        yield spawn
        ready = GaugeMetricFamily("vistream_ready", "1 once the model is warm and the readers are started.")
        ready.add_metric([], 1.0 if d.ready else 0.0)
        yield ready
        if d.ready:  # labels only a loaded model knows
            model = GaugeMetricFamily(
                "vistream_model_info",
                "1, with the loaded model's backend, device and the precision it computes in.",
                labels=["backend", "device", "precision"],
            )
            model.add_metric([d.ready.backend, d.ready.device, d.ready.precision], 1.0)
            yield model
        started, _, _ = d.events()
        yield from _alert_metrics(fig, started, cameras)


def _alert_metrics(
    fig: Figures, started: dict[tuple[str, str], int], cameras: list[CameraStatus]
) -> Iterator[Metric]:
    """Events, the outbox, snapshots and frame holds."""
    box = fig.outbox
    events = CounterMetricFamily(
        "vistream_events", "Events started, per camera and rule.", labels=["camera", "rule"]
    )
    for (camera, rule), n in sorted(started.items()):
        events.add_metric([camera, rule], n)
    yield events
    pending = GaugeMetricFamily(
        "vistream_outbox_pending", "Event, counter and snapshot messages not yet acknowledged by the broker."
    )
    pending.add_metric([], box.pending)
    yield pending
    evicted = CounterMetricFamily(
        "vistream_outbox_evicted",
        "Messages dropped undelivered because the outbox was full (outbox.max_rows) or they were too old "
        "(outbox.max_age_s).",
    )
    evicted.add_metric([], box.evicted)
    yield evicted
    failures = CounterMetricFamily(
        "vistream_outbox_write_failures",
        "Outbox opens and writes that failed for an operational reason: locked, read-only, disk full, I/O.",
    )
    failures.add_metric([], box.write_failures)
    yield failures
    unavailable = GaugeMetricFamily(
        "vistream_outbox_unavailable", "1 while events cannot be written to the outbox (/healthz says why)."
    )
    unavailable.add_metric([], 1.0 if box.problem else 0.0)
    yield unavailable
    unwritten, dropped = fig.unwritten, fig.unwritten_dropped
    queued = GaugeMetricFamily(
        "vistream_alert_messages_unwritten",
        "Event, counter and snapshot messages handed to the outbox's writer thread and not written yet "
        "(kept in memory while the outbox cannot be written, and tried again).",
    )
    queued.add_metric([], unwritten)
    yield queued
    lost = CounterMetricFamily(
        "vistream_alert_messages_dropped",
        "Messages dropped unwritten because the writer's queue was full while the outbox could not be "
        "written: superseded (an older value of a retained state), update (an event update), event "
        "(every message of an event whose start was not written yet).",
        labels=["reason"],
    )
    for reason in DROP_REASONS_WRITER:
        lost.add_metric([reason], dropped.get(reason, 0))
    yield lost
    errors = CounterMetricFamily(
        "vistream_event_errors", "Frames whose event processing raised (their detections still went out)."
    )
    errors.add_metric([], fig.event_errors)
    yield errors
    snapshots = CounterMetricFamily(
        "vistream_snapshots",
        "Event snapshots rendered (ok) or lost (the frame left the ring first).",
        labels=["result"],
    )
    snapshots.add_metric(["ok"], fig.snapshots)
    snapshots.add_metric(["lost"], fig.snapshots_lost)
    yield snapshots
    holds = CounterMetricFamily(
        "vistream_ring_holds_broken",
        "Frames held for their result that the reader overwrote anyway: expired (held over 5 s) or "
        "broken (no free slot).",
        labels=["camera", "reason"],
    )
    for cam in cameras:
        holds.add_metric([cam.name, "expired"], cam.field("holds_expired"))
        holds.add_metric([cam.name, "broken"], cam.field("holds_broken"))
    yield holds


def serve_metrics(daemon: StatusSource, host: str, port: int) -> HttpServer:
    """Serve /metrics, with the rest of the daemon's HTTP (vistream.ops.http), from a thread.

    Returns the server (`.port`, `.stop()`); OSError when it cannot listen on host:port."""
    from vistream.ops.http import serve  # Starlette and uvicorn: only when metrics are enabled

    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector(daemon))
    return serve(daemon, host, port, make_asgi_app(registry))
