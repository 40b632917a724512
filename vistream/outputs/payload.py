"""The detections payload of `{prefix}/{camera}/detections` (see docs/mqtt.md)."""

from __future__ import annotations

import json

from vistream.scheduler.messages import FrameResult


def detections_payload(frame: FrameResult, names: dict[int, str], published_at: float) -> bytes:
    objects = [
        {
            "label": names.get(cls, str(cls)),
            "class_id": cls,
            "confidence": round(conf, 3),
            "box": [round(x1, 1), round(y1, 1), round(x2, 1), round(y2, 1)],
        }
        for cls, conf, x1, y1, x2, y2 in frame.detections
    ]
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
