"""The daemon's outbox lifecycle: one opened by a reload closes after the result pump stops."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from vistream.config.models import Config
from vistream.daemon import Daemon


class FakeAlerts:
    """What a late outbox is handed to: the result thread's Alerts, through `reconfigure`."""

    outbox = None

    def reconfigure(self, cfg: object, outbox: object = None) -> None:
        self.outbox = outbox or self.outbox


def config(state_dir: Path, alerts: list[dict]) -> Config:
    cams = [{"name": "a", "url": "rtsp://h/a", "lines": {"mid": [[0, 0.5], [1, 0.5]]} if alerts else {}}]
    return Config.model_validate({"state_dir": str(state_dir), "cameras": cams, "alerts": alerts})


def test_an_outbox_opened_by_a_reload_closes_in_the_stop_order(tmp_path: Path) -> None:
    """1. The daemon starts without rules: no outbox, but its place in the stop order is kept.
    2. Parts started after it (the result pump) register their stops.
    3. A reload brings the first rule: the outbox opens.
    4. Stopping runs the pump's stop while the outbox is still open (it may write one last
       frame's events), and closes the outbox after it."""
    d = Daemon(config(tmp_path, []))
    d._init_outbox()
    assert d.outbox is None
    seen: list[int] = []
    d._stack.callback(lambda: seen.append(d.outbox.add("a", "t", b"x") if d.outbox else -1))
    d.cfg = config(tmp_path, [{"name": "r", "line": "mid"}])
    d.alerts = FakeAlerts()  # type: ignore[assignment]
    d.mqtt = SimpleNamespace(  # type: ignore[assignment]
        client=SimpleNamespace(is_connected=lambda: False), add_listener=lambda listener: None
    )
    d._open_outbox_late()
    assert d.outbox is not None and d.alerts.outbox is d.outbox
    try:
        d._stack.close()
    finally:
        d._stop_delivery()
    assert seen and seen[0] > 0  # the pump's last write went in: the outbox was still open
