"""The detections payload of `{prefix}/{camera}/detections` (see docs/mqtt.md)."""

from __future__ import annotations

import json
from collections.abc import Sequence

from vistream.events.engine import TrackedObject
from vistream.scheduler.messages import FrameResult


def detections_payload(
    frame: FrameResult,
    names: dict[int, str],
    published_at: float,
    tracked: Sequence[TrackedObject] | None = None,
) -> bytes:
    """The JSON; `tracked` (the event engine's view of the same detections) adds their track ids."""
    if tracked is None:
        tracked = [
            TrackedObject(names.get(cls, str(cls)), cls, conf, (x1, y1, x2, y2), None)
            for cls, conf, x1, y1, x2, y2 in frame.detections
        ]
    objects = [obj.payload() for obj in tracked]
    doc = {
        "camera": frame.camera,
        "seq": frame.seq,
        "captured_at": round(frame.captured_at, 3),
        "published_at": round(published_at, 3),
        "width": frame.width,
        "height": frame.height,
        "objects": objects,
    }
    return json.dumps(doc, separators=(",", ":")).encode()
