"""Sharding (vistream/ops/shard.py): the rendezvous assignment, `--shard` parsing, a shard's config view,
and the `shards` and `run --shard` commands' usage errors."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from vistream.cli import main
from vistream.config.models import Config
from vistream.ops.shard import Shard, ShardError, assign, from_option, owner, parse, table, weight
from vistream.outputs.homeassistant import discovery_messages

CAMERAS_64 = [f"cam-{i:02d}" for i in range(64)]
CAMERAS_1000 = [f"camera_{i}" for i in range(1000)]


def config(names: list[str], alerts: list[dict] | None = None) -> Config:
    return Config.model_validate(
        {
            "mqtt": {"topic_prefix": "vs", "client_id": "vs", "home_assistant": True},
            "cameras": [
                {"name": n, "url": f"rtsp://h/{n}", "lines": {"gate": [[0.5, 0], [0.5, 1]]}} for n in names
            ],
            "alerts": alerts or [],
        }
    )


# -- the assignment ------------------------------------------------------------------


PINNED_4 = {"front_door": 1, "driveway": 1, "garden": 0, "garage": 0, "yard": 1, "porch": 3, "street": 3}


def test_weights_and_assignment_are_pinned_and_the_same_in_every_process() -> None:
    """1. The weight of a (shard, camera) pair is a fixed number and a few names' shards of 4 are
    written down: a change of hash or key format would move cameras of every running deployment.
    2. Processes with different PYTHONHASHSEEDs (as two daemons have) compute the same assignment,
    which Python's salted hash() would not."""
    assert (weight(0, "front_door"), weight(1, "front_door")) == (0x49A378C20DCB45D6, 0x72C7BE2A0A8C335D)
    assert {name: owner(name, 4) for name in PINNED_4} == PINNED_4
    code = (
        "import json, sys; from vistream.ops.shard import owner; "
        "print(json.dumps({n: owner(n, 4) for n in sys.argv[1:]}))"
    )
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", code, *PINNED_4],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        assert json.loads(out) == PINNED_4
    assert owner("front_door", 1) == 0


def test_balanced_within_1_3_of_the_mean_for_64_cameras_over_4_shards() -> None:
    """64 cameras over 4 shards: no shard has more than 1.3x the mean (16), every shard has some."""
    shards = assign(CAMERAS_64, 4)
    sizes = [len(v) for v in shards.values()]
    assert sum(sizes) == 64
    assert max(sizes) <= 1.3 * 16, sizes
    assert min(sizes) > 0


@pytest.mark.parametrize("count", [1, 2, 3, 4, 7, 8])
def test_adding_a_shard_moves_about_1_over_n_plus_1_and_only_to_the_new_shard(count: int) -> None:
    """Going from N to N+1 shards: every camera that moves, moves to the new shard N (none between
    old shards), and about 1/(N+1) of 1,000 cameras move (within 25%)."""
    before = {name: owner(name, count) for name in CAMERAS_1000}
    after = {name: owner(name, count + 1) for name in CAMERAS_1000}
    moved = [name for name in CAMERAS_1000 if before[name] != after[name]]
    assert all(after[name] == count for name in moved)
    expected = len(CAMERAS_1000) / (count + 1)
    assert abs(len(moved) - expected) <= 0.25 * expected, (len(moved), expected)


def test_a_camera_s_shard_depends_only_on_its_name() -> None:
    """Adding or removing other cameras moves nothing: the assignment of the rest is unchanged."""
    full = assign(CAMERAS_64, 4)
    fewer = assign(CAMERAS_64[::2], 4)
    for k in range(4):
        assert fewer[k] == [n for n in full[k] if n in CAMERAS_64[::2]]


# -- parsing -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "hostname", "want"),
    [
        ("0/2", None, Shard(0, 2)),
        ("1/2", None, Shard(1, 2)),
        (" 3/8 ", None, Shard(3, 8)),
        ("0/1", None, Shard(0, 1)),
        ("auto/3", "vistream-2", Shard(2, 3)),
        ("auto/2", "analytics-vistream-0", Shard(0, 2)),
        ("auto/12", "vistream-11", Shard(11, 12)),
    ],
)
def test_parse(text: str, hostname: str | None, want: Shard) -> None:
    assert parse(text, hostname=hostname) == want


@pytest.mark.parametrize(
    ("text", "hostname", "message"),
    [
        ("", None, "--shard: '' is not K/N"),
        ("2", None, "--shard: '2' is not K/N"),
        ("a/2", None, "--shard: 'a/2' is not K/N"),
        ("-1/2", None, "--shard: '-1/2' is not K/N"),
        ("1/2/3", None, "is not K/N"),
        ("2/2", None, "--shard: '2/2': K must be below N (shards are 0 to 1)"),
        ("5/3", None, "K must be below N"),
        ("0/0", None, "--shard: '0/0': N must be 1 to 1024"),
        ("0/5000", None, "N must be 1 to 1024"),
        ("auto/2", "vm", "--shard: 'auto/2': the host name 'vm' does not end in -K"),
        ("auto/2", "web-a", "does not end in -K"),
        ("auto/2", "-1", "does not end in -K"),
        ("auto/2", "vistream-2", "--shard: 'auto/2': the host name 'vistream-2' gives shard 2, not below 2"),
    ],
)
def test_parse_errors_are_one_line_naming_the_option(text: str, hostname: str | None, message: str) -> None:
    with pytest.raises(ShardError) as exc:
        parse(text, hostname=hostname)
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_option_before_environment() -> None:
    """`--shard` wins over `$VISTREAM_SHARD`; errors name where the value came from; neither: None."""
    assert from_option("1/2", {"VISTREAM_SHARD": "0/4"}) == Shard(1, 2)
    assert from_option(None, {"VISTREAM_SHARD": "3/4"}) == Shard(3, 4)
    assert from_option(None, {}) is None
    assert from_option(None, {"VISTREAM_SHARD": ""}) is None
    with pytest.raises(ShardError, match=r"^VISTREAM_SHARD: '4/4'"):
        from_option(None, {"VISTREAM_SHARD": "4/4"})


# -- what a shard runs ---------------------------------------------------------------


def test_view_disables_the_other_shards_cameras_and_renames_the_client() -> None:
    """1. Shard K's view has exactly its cameras enabled; the others stay in the list, disabled.
    2. Its client id is `{client_id}-{K}`; metrics port + K (0 stays 0); its own outbox file.
    3. A rule naming only other shards' cameras applies to no camera here (not an error).
    4. N = 1 is no sharding: the config as it is, the client id and port unchanged."""
    names = ["a", "b", "c", "d", "e", "f"]
    cfg = config(names, alerts=[{"name": "r", "cameras": names}])
    seen: list[str] = []
    for k in range(2):
        shard = Shard(k, 2)
        view = shard.view(cfg)
        mine = [c.name for c in view.enabled_cameras]
        assert mine == [n for n in names if owner(n, 2) == k]
        assert [c.name for c in view.cameras] == names
        assert view.mqtt.client_id == f"vs-{k}"
        assert view.rule_cameras(view.alerts[0]) == mine
        seen += mine
    assert sorted(seen) == names
    other = next(n for n in names if owner(n, 2) == 1)
    only_other = config(names, alerts=[{"name": "r", "cameras": [other]}])
    assert Shard(0, 2).view(only_other).rule_cameras(only_other.alerts[0]) == []
    assert cfg.mqtt.client_id == "vs"  # the loaded config is not changed
    assert Shard(1, 2).metrics_port(9108) == 9109
    assert Shard(1, 2).metrics_port(0) == 0
    assert parse("auto/2", hostname="vistream-1").metrics_port(9108) == 9108  # a pod each: one port
    assert Shard(1, 2).state_file("outbox.sqlite3") == "outbox-1.sqlite3"
    assert Shard(1, 2).daemon_topic("vs", "vs") == "vs/daemons/vs-1/status"
    assert Shard(0, 1).view(cfg) is cfg
    assert (Shard(0, 1).client_id("vs"), Shard(0, 1).metrics_port(9108)) == ("vs", 9108)
    assert Shard(0, 1).state_file("outbox.sqlite3") == "outbox.sqlite3"


def test_home_assistant_entities_follow_their_camera_s_shard() -> None:
    """Sharded, every shard announces every camera's entities, each available on the daemon topic of
    the shard serving its camera; entity ids stay those of the unsharded daemon (a camera that moves
    to another shard keeps them)."""
    names = ["a", "b", "c", "d"]
    cfg = config(names, alerts=[{"name": "r", "line": "gate"}])
    plain = {d.topic: json.loads(d.payload) for d in discovery_messages(cfg)}
    for k in range(2):
        docs = {d.topic: json.loads(d.payload) for d in discovery_messages(cfg, Shard(k, 2))}
        assert set(docs) == set(plain)
        for doc in docs.values():
            camera = doc["state_topic" if "state_topic" in doc else "image_topic"].split("/")[1]
            want = f"vs/daemons/vs-{owner(camera, 2)}/status"
            assert doc["availability"] == [{"topic": want}]
        assert {t: d["unique_id"] for t, d in docs.items()} == {t: d["unique_id"] for t, d in plain.items()}


# -- the commands --------------------------------------------------------------------


def write(tmp_path: Path, names: list[str]) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"cameras": [{"name": n, "url": f"rtsp://h/{n}"} for n in names]}))
    return path


def test_shards_command_prints_every_camera_s_shard(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    names = ["front_door", "driveway", "garden", "garage", "yard"]
    assert main(["shards", "-c", str(write(tmp_path, names)), "--count", "3"]) == 0
    out = capsys.readouterr().out
    assert out == table(config(names), 3).replace("vs-", "vistream-") + "\n"
    rows = out.splitlines()
    assert rows[0].split() == ["camera", "shard", "daemon"]
    for row, name in zip(rows[1:], names, strict=False):
        assert row.split() == [name, str(owner(name, 3)), f"vistream-{owner(name, 3)}"]
    assert rows[-1].startswith("5 camera(s) over 3 shard(s): ")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--count", "0"], "--count: 0 is not 1 to 1024"),
        (["--count", "2000"], "--count: 2000 is not 1 to 1024"),
    ],
)
def test_shards_command_usage_errors_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["shards", "-c", str(write(tmp_path, ["a"])), *args]) == 2
    assert capsys.readouterr().err.strip() == message


def test_shards_command_invalid_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("cameras:\n  - name: a\n    url: rtsp://h/a\n    detect_fps: 0\n")
    assert main(["shards", "-c", str(path), "--count", "2"]) == 2
    assert "cameras[0].detect_fps" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--shard", "x"], {}, "--shard: 'x' is not K/N"),
        (["--shard", "2/2"], {}, "--shard: '2/2': K must be below N"),
        ([], {"VISTREAM_SHARD": "1/1"}, "VISTREAM_SHARD: '1/1': K must be below N"),
    ],
)
def test_run_with_a_bad_shard_exits_2_with_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    argv: list[str],
    env: dict[str, str],
    message: str,
) -> None:
    """A bad `--shard` is a usage error found before the config is read or anything starts: exit 2 and
    one error line."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr("vistream.cli.setup_logging", lambda *a: None)
    with caplog.at_level(logging.ERROR):
        assert main(["run", "-c", str(tmp_path / "absent.yaml"), *argv]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].startswith(message), errors


def test_run_auto_without_a_numbered_host_name_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("socket.gethostname", lambda: "workstation")
    monkeypatch.setattr("vistream.cli.setup_logging", lambda *a: None)
    with caplog.at_level(logging.ERROR):
        assert main(["run", "-c", str(tmp_path / "absent.yaml"), "--shard", "auto/2"]) == 2
    assert "the host name 'workstation' does not end in -K" in caplog.text


class FakeCameras:
    """The cameras as a reload changes them: what it starts and removes, no rings or readers."""

    retry_s = 10.0

    def __init__(self) -> None:
        self.failed: dict[str, str] = {}
        self.started: list[str] = []
        self.removed: list[str] = []

    def add(self, cam: Any) -> None:
        self.started.append(cam.name)

    def remove(self, name: str) -> None:
        self.removed.append(name)

    def stop(self, names: list[str], timeout: float, stop: Any = None) -> None:
        pass

    def start(self, cam: Any) -> None:
        pass

    def ring_names(self) -> dict[str, str]:
        return {name: f"ring-{name}" for name in self.started}

    def retry_due(self, now: float, *, force: bool = False) -> list[Any]:
        return []


def test_a_reload_keeps_applying_the_shard_filter(tmp_path: Path) -> None:
    """1. Shard 0 of 2 starts with 8 cameras: it runs only its own.
    2. A reload (SIGHUP) adds 8 cameras and removes one camera of each shard: shard 0 starts only the
    new cameras the hash gives it and stops only its own removed camera; its client id stays `vs-0`
    (no `mqtt` restart asked for) and Home Assistant sees the whole new config."""
    from types import SimpleNamespace

    from vistream.daemon import Daemon
    from vistream.ops.process import StopFlag
    from vistream.ops.reload import Reloader
    from vistream.outputs.outbox_runtime import OutboxRuntime

    before = [f"c{i}" for i in range(8)]
    gone = [next(n for n in before if owner(n, 2) == k) for k in (0, 1)]
    after = [n for n in before if n not in gone] + [f"n{i}" for i in range(8)]

    def plain(names: list[str]) -> Config:  # nothing to deliver: no outbox to open
        cams = [{"name": n, "url": f"rtsp://h/{n}"} for n in names]
        return Config.model_validate({"mqtt": {"client_id": "vs"}, "cameras": cams})

    d = Daemon(plain(before), shard=Shard(0, 2))
    assert [c.name for c in d.cfg.enabled_cameras] == [n for n in before if owner(n, 2) == 0]
    cameras, told = FakeCameras(), []
    mqtt = SimpleNamespace(camera_status=lambda name, online: None, forget_camera=told.append)
    reloader = Reloader(
        d.shard, cameras, SimpleNamespace(send=lambda msg: None), mqtt, StopFlag(),  # type: ignore[arg-type]
        rules=SimpleNamespace(reconfigure=lambda cfg, outbox=None: None),
        outbox=OutboxRuntime(tmp_path / "outbox.sqlite3", d.cfg.outbox), link=mqtt,  # type: ignore[arg-type]
        discovery=SimpleNamespace(update=lambda cfg: None),
    )  # fmt: skip
    change, cfg, full_cfg = reloader.plan(plain(after), d.cfg, d.full_cfg)
    reloader.apply(change, cfg, full_cfg)
    assert cameras.started == [n for n in after if n.startswith("n") and owner(n, 2) == 0]
    assert cameras.removed == told == [gone[0]]
    assert [c.name for c in cfg.enabled_cameras] == [n for n in after if owner(n, 2) == 0]
    assert cfg.mqtt.client_id == "vs-0"
    assert [c.name for c in full_cfg.enabled_cameras] == after
