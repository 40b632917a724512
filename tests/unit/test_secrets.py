"""Secrets stay secret: one redaction for every log record (messages, tracebacks, stacks, from every
process) and every string the HTTP API serves; camera passwords from files, spliced into the URL for
the reader only; no secret in a child's environment; names that cannot hide a trailing newline."""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import textwrap
import time
from pathlib import Path

import pytest

from vistream.config import ConfigError, check_config, load_config
from vistream.config.models import CameraConfig, MqttConfig
from vistream.config.secrets import RedactFilter, camera_url, redact_text, redact_url
from vistream.ops.logs import JsonFormatter, LogHub, PipeHandler, TextFormatter
from vistream.ops.process import SPAWN, Child, StopFlag
from vistream.outputs.mqtt import MqttPublisher, sends_password_in_clear
from vistream.sources.reader import ReaderSpec

# The URL of the issue: a quote and an encoded "@" in the password, a token in the query.
URL = "rtsp://u:pa'ss%40x@10.0.0.5:554/s?token=abc"
LEAKS = ("pa'ss", "ss%40x", "pa'ss@x", "abc")


def leaked(text: str) -> list[str]:
    return [part for part in LEAKS if part in text]


REDACT_TEXT = [
    (URL, "rtsp://***@10.0.0.5:554/s?token=***"),
    (f"Connection refused: '{URL}'", "Connection refused: 'rtsp://***@10.0.0.5:554/s?token=***'"),
    ("rtsp://h/s?password=pa'ss: refused", "rtsp://h/s?password=***: refused"),
    ('open "rtsp://a:b\'c"d@h/s" failed', 'open "rtsp://***@h/s" failed'),
    ("rtsp://h/s?auth=q1&apikey=q2&api_key=q3&access_token=q4", "rtsp://h/s?auth=***&apikey=***&api_key=***&access_token=***"),
    ("rtsp://h/s?password=q1&passwd=q2&pwd=q3&channel=1", "rtsp://h/s?password=***&passwd=***&pwd=***&channel=1"),
    ("rtsp://h/s?Token=q1;x=2", "rtsp://h/s?Token=***;x=2"),
    ("with --password=q1 and client_secret=q2, fps=5", "with --password=*** and client_secret=*** fps=5"),
    ("/videos/me@home.mp4 ended", "/videos/me@home.mp4 ended"),
    ("camera front: reconnecting in 2.0s", "camera front: reconnecting in 2.0s"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), REDACT_TEXT, ids=[t for t, _ in REDACT_TEXT])
def test_redact_text(text: str, expected: str) -> None:
    """Userinfo with quotes, every secret query parameter, secrets outside a URL; idempotent."""
    assert redact_text(text) == expected
    assert redact_text(expected) == expected


def test_redact_url_keeps_the_shape_and_drops_the_token() -> None:
    assert redact_url(URL) == "rtsp://***@10.0.0.5:554/s?token=***"
    assert redact_url("rtsp://h:554/s?channel=1&subtype=0") == "rtsp://h:554/s?channel=1&subtype=0"


def crashed_record(**kw: object) -> logging.LogRecord:
    try:
        raise OSError(f"Connection refused: '{URL}'")
    except OSError as exc:
        return logging.LogRecord("vistream.sources.reader", logging.ERROR, __file__, 1, "open %s failed: %s",
                                 (URL, "x"), (type(exc), exc, exc.__traceback__), **kw)  # fmt: skip


def test_the_filter_redacts_message_args_traceback_and_stack() -> None:
    """1. A record whose args, exception and stack all hold the URL.
    2. After the filter, none of them does, and the record still formats (text and JSON)."""
    rec = crashed_record(sinfo=f"Stack (most recent call last):\n  open({URL!r})")
    assert RedactFilter().filter(rec)
    assert not leaked(rec.getMessage()) and not leaked(rec.exc_text) and not leaked(rec.stack_info)
    assert "OSError: Connection refused: 'rtsp://***@10.0.0.5:554/s?token=***" in rec.exc_text
    assert not leaked(TextFormatter().format(rec))


@pytest.mark.parametrize("formatter", [TextFormatter(), TextFormatter(journal=True), JsonFormatter()])
def test_every_formatter_redacts_on_its_own(formatter: logging.Formatter) -> None:
    """The parent writes through these: a record that no filter saw (a library's) is redacted too."""
    out = formatter.format(crashed_record(sinfo=f"Stack:\n  open({URL!r})"))
    assert not leaked(out), out
    if isinstance(formatter, JsonFormatter):
        assert json.loads(out)["exc_info"].startswith("Traceback")


def test_a_record_leaving_a_child_is_redacted_before_the_pipe() -> None:
    """PipeHandler (a child's only handler) redacts what it sends: the parent never holds it."""
    r, w = SPAWN.Pipe(duplex=False)
    handler = PipeHandler(w, context={"camera": "door"})
    try:
        handler.handle(crashed_record())
        assert r.poll(5)
        got = r.recv()
        assert not leaked(got.getMessage()) and not leaked(got.exc_text), got.exc_text
    finally:
        handler.close()
        r.close()


def child_that_crashes(env_file: str, *, stop: StopFlag) -> int:
    """Runs in a spawned child: reports its environment (in-process and as exec'd), then crashes."""
    with open(f"/proc/{os.getpid()}/environ", "rb") as f:
        execd = [item.split(b"=", 1)[0].decode() for item in f.read().split(b"\0") if item]
    Path(env_file).write_text(json.dumps({"os": sorted(os.environ), "proc": execd}))
    raise OSError(f"Connection refused: '{URL}'")


def test_a_child_crash_reaches_the_parent_redacted_and_the_child_had_no_secrets(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1. The daemon's environment holds VISTREAM_MQTT_PASSWORD and CREDENTIALS_DIRECTORY.
    2. A child started like a reader crashes with the camera URL in its exception.
    3. The traceback reaches the parent's loggers through the log hub without the password or token.
    4. Neither variable was in the child's environment, not even in the one it was exec'd with;
       the parent still has both."""
    monkeypatch.setenv("VISTREAM_MQTT_PASSWORD", "mqtt-pw")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    hub = LogHub()
    hub.start()
    env_file = tmp_path / "env.json"
    child = Child("reader door", child_that_crashes, (str(env_file),), hub, log_context={"camera": "door"})
    try:
        with caplog.at_level(logging.INFO):
            child.start()
            assert child.join(60) and child.exitcode == 1
            deadline = time.monotonic() + 10
            while not any(r.exc_text for r in caplog.records) and time.monotonic() < deadline:
                time.sleep(0.02)
    finally:
        child.stop(1.0)
        child.close()
        hub.stop()
    crash = next(r for r in caplog.records if r.exc_text)
    assert "reader door crashed" in crash.getMessage()
    assert "OSError: Connection refused: 'rtsp://***@" in crash.exc_text and not leaked(crash.exc_text)
    env = json.loads(env_file.read_text())
    for name in ("VISTREAM_MQTT_PASSWORD", "CREDENTIALS_DIRECTORY"):
        assert name not in env["os"] and name not in env["proc"], name
    assert os.environ["VISTREAM_MQTT_PASSWORD"] == "mqtt-pw"


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_camera_password_file_is_spliced_percent_encoded_for_the_reader_only(tmp_path: Path) -> None:
    """1. A camera with `username` and `password_file` (a quote, "@", "%", "/" and a trailing newline).
    2. The reader's URL has them percent-encoded, one newline stripped; the config's URL has none.
    3. The spec goes to the reader through spawn's pipe (pickled) with the URL, and its repr
       (anything that prints it) holds no password."""
    write(tmp_path / "cam.pw", "pa'ss@x%/y\n")
    cfg = load_config(write(tmp_path / "c.yaml", """
        cameras:
          - {name: front, url: "rtsp://10.0.0.5:554/s", username: "ad min", password_file: cam.pw}
    """))  # fmt: skip
    cam = cfg.cameras[0]
    assert cam.url == "rtsp://10.0.0.5:554/s" and cam.password_file == tmp_path / "cam.pw"
    assert camera_url(cam) == "rtsp://ad%20min:pa%27ss%40x%25%2Fy@10.0.0.5:554/s"
    spec = pickle.loads(pickle.dumps(ReaderSpec(cam, "ring", None)))
    assert spec.url == "rtsp://ad%20min:pa%27ss%40x%25%2Fy@10.0.0.5:554/s" and spec.url_problem is None
    assert "pa'ss" not in repr(spec) and "pa%27ss" not in repr(spec)
    assert redact_url(spec.url) == "rtsp://***@10.0.0.5:554/s"


def test_an_unreadable_password_file_is_a_reader_problem_not_a_daemon_crash(tmp_path: Path) -> None:
    pw = write(tmp_path / "cam.pw", "x")
    cam = CameraConfig(name="front", url="rtsp://h:554/s", username="u", password_file=pw)
    pw.unlink()
    spec = ReaderSpec(cam, "ring", None)
    assert spec.url_problem is not None and "camera front: password_file: cannot read" in spec.url_problem


@pytest.mark.parametrize(
    ("camera", "problem"),
    [
        ("{name: a, url: 'rtsp://u:p@h/s', username: u, password_file: pw}",
         "cameras[0].password_file: set while the URL already holds credentials"),
        ("{name: a, url: 'rtsp://u@h/s', username: v}",
         "cameras[0].username: set while the URL already holds credentials"),
        ("{name: a, url: 'rtsp://h/s', password_file: pw}", "cameras[0].password_file: set without username"),
        ("{name: a, url: 'rtsp://h/s', username: u, password_file: nope}",
         "cameras[0].password_file: no such file"),
        ("{name: a, url: clip.mp4, username: u}", "cameras[0].username: only for an rtsp:// or rtsps:// URL"),
    ],
)  # fmt: skip
def test_camera_credentials_in_two_places_are_an_error_naming_the_key(
    tmp_path: Path, camera: str, problem: str
) -> None:
    write(tmp_path / "pw", "secret\n")
    write(tmp_path / "clip.mp4", "")
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path / "c.yaml", f"cameras:\n  - {camera}\n"))
    assert any(line.startswith(problem) for line in info.value.problems), info.value.problems
    assert "secret" not in str(info.value) and ":p@" not in str(info.value)


NL_NAMES = {
    "camera": "cameras:\n  - {name: \"front\\n\", url: rtsp://h/x}\n",
    "zone": "cameras:\n  - {name: a, url: rtsp://h/x, zones: {\"drive\\n\": [[0,0],[1,0],[1,1]]}}\n",
    "line": "cameras:\n  - {name: a, url: rtsp://h/x, lines: {\"gate\\n\": [[0,0],[1,1]]}}\n",
    "rule": "cameras:\n  - {name: a, url: rtsp://h/x}\nalerts:\n  - {name: \"r\\n\", labels: [person]}\n",
    "client_id": "mqtt: {client_id: \"vistream\\n\"}\ncameras:\n  - {name: a, url: rtsp://h/x}\n",
    "topic_prefix": "mqtt: {topic_prefix: \"vistream\\n\"}\ncameras:\n  - {name: a, url: rtsp://h/x}\n",
    "discovery_prefix": "mqtt: {discovery_prefix: \"homeassistant\\n\"}\ncameras:\n  - {name: a, url: rtsp://h/x}\n",
    "device": "model: {device: \"cpu\\n\"}\ncameras:\n  - {name: a, url: rtsp://h/x}\n",
}  # fmt: skip


@pytest.mark.parametrize("text", NL_NAMES.values(), ids=NL_NAMES.keys())
def test_check_config_refuses_every_validated_name_with_a_trailing_newline(tmp_path: Path, text: str) -> None:
    """`NAME_RE.match` with "$" let 'front\\n' through; every validated name now refuses it."""
    out = io.StringIO()
    assert check_config(write(tmp_path / "c.yaml", text), out) == 2, out.getvalue()


def test_the_same_configs_without_the_newline_pass(tmp_path: Path) -> None:
    for key, text in NL_NAMES.items():
        out = io.StringIO()
        path = write(tmp_path / "c.yaml", text.replace("\\n", ""))
        assert check_config(path, out) == 0, (key, out.getvalue())


def test_export_triton_refuses_a_model_name_with_a_newline_or_a_dot_path() -> None:
    from vistream.detector.triton_export import ExportError, export_triton

    for name in ("yolov8n\n", "..", "."):
        with pytest.raises(ExportError, match="--name"):
            export_triton("yolov8n.pt", Path("/nonexistent"), name=name)


@pytest.mark.parametrize(
    ("mqtt", "clear"),
    [
        ({"host": "broker.lan", "username": "u"}, True),
        ({"host": "10.0.0.2", "username": "u"}, True),
        ({"host": "localhost", "username": "u"}, False),
        ({"host": "127.0.0.1", "username": "u"}, False),
        ({"host": "::1", "username": "u"}, False),
        ({"host": "broker.lan", "username": "u", "tls": {"enabled": True}}, False),
        ({"host": "broker.lan"}, False),  # no user: no password is sent
    ],
)
def test_a_password_in_clear_to_another_machine(mqtt: dict, clear: bool) -> None:  # type: ignore[type-arg]
    assert sends_password_in_clear(MqttConfig(**mqtt), "pw") is clear
    assert not sends_password_in_clear(MqttConfig(**mqtt), None)


def test_the_publisher_warns_once_about_a_password_in_clear(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="vistream.outputs.mqtt"):
        MqttPublisher(MqttConfig(host="broker.lan", username="u"), "s3cret")
        MqttPublisher(MqttConfig(host="127.0.0.1", username="u"), "s3cret")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "without TLS" in lines[0] and "broker.lan" in lines[0]
    assert "s3cret" not in lines[0]


def test_a_reload_restarts_the_camera_whose_password_file_changed(tmp_path: Path) -> None:
    """1. A config with two cameras using password files is loaded (as at start).
    2. One file's content changes, the config does not; the config is loaded again (as at SIGHUP).
    3. The reload's diff restarts that camera's reader (which reads the file again), not the other;
       the digest that tells it is in no repr."""
    from vistream.ops.reload import diff

    write(tmp_path / "a.pw", "old\n")
    write(tmp_path / "b.pw", "same\n")
    path = write(tmp_path / "c.yaml", """
        cameras:
          - {name: a, url: "rtsp://h:554/a", username: u, password_file: a.pw}
          - {name: b, url: "rtsp://h:554/b", username: u, password_file: b.pw}
    """)  # fmt: skip
    before = load_config(path)
    assert diff(before, load_config(path)).restarted == {}
    write(tmp_path / "a.pw", "new\n")
    after = load_config(path)
    assert diff(before, after).restarted == {"a": ["password_file (its content)"]}
    assert before.cameras[0].password_digest not in repr(before)


def test_a_host_name_with_a_trailing_newline_gives_no_shard_index() -> None:
    from vistream.ops.shard import ShardError, parse

    assert parse("auto/2", hostname="vistream-1").index == 1
    with pytest.raises(ShardError, match="does not end in -K"):
        parse("auto/2", hostname="vistream-1\n")
