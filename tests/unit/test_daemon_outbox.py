"""The daemon's outbox lifecycle (`OutboxRuntime`): one opened by a reload closes after the result
pump stops, and is handed to the result thread's Alerts through `reconfigure`."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace

from vistream.config.models import Config
from vistream.outputs.outbox import FILENAME
from vistream.outputs.outbox_runtime import OutboxRuntime


class FakeAlerts:
    """What a late outbox is handed to: the result thread's Alerts, through `reconfigure`."""

    outbox = None

    def reconfigure(self, cfg: object, outbox: object = None) -> None:
        self.outbox = outbox or self.outbox


def config(state_dir: Path, alerts: list[dict]) -> Config:
    cams = [{"name": "a", "url": "rtsp://h/a", "lines": {"mid": [[0, 0.5], [1, 0.5]]} if alerts else {}}]
    return Config.model_validate({"state_dir": str(state_dir), "cameras": cams, "alerts": alerts})


def runtime(state_dir: Path) -> OutboxRuntime:
    return OutboxRuntime(state_dir / FILENAME, config(state_dir, []).outbox)


def link() -> SimpleNamespace:
    """An MQTT link that is not connected: the late Delivery waits for it."""
    return SimpleNamespace(
        client=SimpleNamespace(is_connected=lambda: False), add_listener=lambda listener: None
    )


def test_an_outbox_opened_by_a_reload_closes_in_the_stop_order(tmp_path: Path) -> None:
    """1. The daemon starts without rules: no outbox, but its place in the stop order is kept.
    2. Parts started after it (the result pump) register their stops.
    3. A reload brings the first rule: the outbox opens and Alerts get it through `reconfigure`.
    4. Stopping runs the pump's stop while the outbox is still open (it may write one last
       frame's events), and closes the outbox after it."""
    rt = runtime(tmp_path)
    stack = ExitStack()
    rt.start(stack, config(tmp_path, []))
    assert rt.outbox is None
    seen: list[int] = []
    stack.callback(lambda: seen.append(rt.outbox.add("a", "t", b"x") if rt.outbox else -1))
    alerts = FakeAlerts()
    rt.reload(config(tmp_path, [{"name": "r", "line": "mid"}]), alerts, link())  # type: ignore[arg-type]
    assert rt.outbox is not None and alerts.outbox is rt.outbox and rt.delivery is not None
    try:
        stack.close()
    finally:
        rt.stop_delivery()
    assert seen and seen[0] > 0  # the pump's last write went in: the outbox was still open
