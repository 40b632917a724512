"""Tracking, zones and lines, alert rules: frames' detections in, events out (main process)."""
