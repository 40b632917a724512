"""The config loader: broken files give one short, located line per problem; secrets stay secret."""

from __future__ import annotations

import io
import shutil
import textwrap
from pathlib import Path

import pytest
from pydantic import ValidationError

from vistream.config import (
    Config,
    ConfigError,
    MqttConfig,
    check_config,
    docs,
    load_config,
    mqtt_password,
    redact_text,
    redact_url,
    validate_config,
)

REPO = Path(__file__).resolve().parents[2]
NOT_YET = "not supported yet in this version (planned: "
CAM = "cameras:\n  - {name: a, url: rtsp://h/x}\n"
# One camera with a zone `drive` over the lower half and a vertical line `gate`.
ZC = (
    "cameras:\n  - name: a\n    url: rtsp://h/x\n"
    "    zones: {drive: [[0, 0.5], [1, 0.5], [1, 1], [0, 1]]}\n    lines: {gate: [[0.5, 0], [0.5, 1]]}\n"
)


def problems_of(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.problems


# (id, YAML text, the expected problem line; `{dir}` is the config's directory)
BROKEN = [
    (
        "unknown-top-key-typo",
        "log_levl: info\n" + CAM,
        "log_levl: unknown key 'log_levl' (did you mean 'log_level'?) (line 1)",
    ),
    (
        "unknown-camera-key-typo",
        "cameras:\n  - name: a\n    url: rtsp://h/x\n    detect_fsp: 5\n",
        "cameras[0].detect_fsp: unknown key 'detect_fsp' (did you mean 'detect_fps'?) (line 4)",
    ),
    (
        "unknown-nested-key-typo",
        "mqtt:\n  tls:\n    ca_fil: /x\n" + CAM,
        "mqtt.tls.ca_fil: unknown key 'ca_fil' (did you mean 'ca_file'?) (line 3)",
    ),
    ("unknown-key-no-suggestion", "banana: 1\n" + CAM, "banana: unknown key 'banana' (line 1)"),
    (
        "duplicate-yaml-key",
        "cameras:\n  - name: a\n    url: rtsp://h/x\n    enabled: false\n    enabled: true\n",
        "cameras[0].enabled: duplicate key (first on line 4) (line 5)",
    ),
    ("no-cameras-key", "model: {}\n", "cameras: required"),
    ("cameras-empty", "cameras: []\n", "cameras: at least one camera is required (line 1)"),
    ("cameras-null", "cameras:\n", "cameras: must be a list (got null) (line 1)"),
    (
        "cameras-mapping",
        "cameras:\n  a: {url: rtsp://h/x}\n",
        "cameras: must be a list (got a mapping) (line 1)",
    ),
    (
        "no-enabled-camera",
        "cameras:\n  - {name: a, url: rtsp://h/x, enabled: false}\n",
        "cameras: no camera is enabled (line 1)",
    ),
    (
        "duplicate-camera-name",
        "cameras:\n  - name: a\n    url: rtsp://h/1\n  - name: b\n    url: rtsp://h/2\n  - name: a\n    url: rtsp://h/3\n",
        "cameras[2].name: duplicate camera name 'a' (also cameras[0]) (line 6)",
    ),
    (
        "camera-name-uppercase",
        "cameras:\n  - {name: Front, url: rtsp://h/x}\n",
        "cameras[0].name: must be 1-64 characters of a-z 0-9 _ - (got 'Front') (line 2)",
    ),
    (
        "camera-name-space",
        "cameras:\n  - name: front door\n    url: rtsp://h/x\n",
        "cameras[0].name: must be 1-64 characters of a-z 0-9 _ - (got 'front door') (line 2)",
    ),
    ("camera-missing-url", "cameras:\n  - name: a\n", "cameras[0].url: required (line 2)"),
    (
        "camera-not-mapping",
        "cameras:\n  - rtsp://h/x\n",
        "cameras[0]: must be a mapping (got 'rtsp://h/x') (line 2)",
    ),
    (
        "secret-in-message-redacted",
        "cameras:\n  - rtsp://admin:hunter2@h/x\n",
        "cameras[0]: must be a mapping (got 'rtsp://***@h/x') (line 2)",
    ),
    (
        "url-http-scheme",
        "cameras:\n  - name: a\n    url: http://h/x.mjpg\n",
        "cameras[0].url: unsupported scheme 'http://' (use rtsp://, rtsps:// or a file path) (line 3)",
    ),
    (
        "url-rtsp-no-host",
        "cameras:\n  - name: a\n    url: rtsp:///stream1\n",
        "cameras[0].url: rtsp URL has no host (line 3)",
    ),
    (
        "url-rtsp-bad-port",
        "cameras:\n  - name: a\n    url: rtsp://u:p@h:99999/s\n",
        "cameras[0].url: rtsp URL has an invalid port (line 3)",
    ),
    (
        "url-file-missing",
        "cameras:\n  - name: a\n    url: clips/front.mp4\n",
        "cameras[0].url: no such file: {dir}/clips/front.mp4 (line 3)",
    ),
    (
        "url-not-string",
        "cameras:\n  - name: a\n    url: 12\n",
        "cameras[0].url: must be a string (YAML read 12; put the value in quotes) (line 3)",
    ),
    (
        "detect-fps-zero",
        "cameras:\n  - {name: a, url: rtsp://h/1}\n  - {name: b, url: rtsp://h/2}\n  - name: c\n"
        "    url: rtsp://h/3\n    detect_fps: 0\n",
        "cameras[2].detect_fps: must be > 0 (line 6)",
    ),
    (
        "detect-fps-string",
        "cameras:\n  - name: a\n    url: rtsp://h/x\n    detect_fps: five\n",
        "cameras[0].detect_fps: must be a number (got 'five') (line 4)",
    ),
    (
        "open-timeout-zero",
        "cameras:\n  - name: a\n    url: rtsp://h/x\n    open_timeout_s: 0\n",
        "cameras[0].open_timeout_s: must be > 0 (line 4)",
    ),
    (
        "read-timeout-negative",
        "cameras:\n  - name: a\n    url: rtsp://h/x\n    read_timeout_s: -1\n",
        "cameras[0].read_timeout_s: must be > 0 (line 4)",
    ),
    (
        "transport-unknown",
        "cameras:\n  - name: a\n    url: rtsp://h/x\n    transport: quic\n",
        "cameras[0].transport: must be one of tcp or udp (got 'quic') (line 4)",
    ),
    ("max-batch-zero", "batching:\n  max_batch: 0\n" + CAM, "batching.max_batch: must be > 0 (line 2)"),
    (
        "max-frame-age-negative",
        "batching:\n  max_frame_age_ms: -5\n" + CAM,
        "batching.max_frame_age_ms: must be > 0 (line 2)",
    ),
    (
        "max-wait-not-below-age",
        "batching:\n  max_wait_ms: 600\n  max_frame_age_ms: 500\n" + CAM,
        "batching.max_wait_ms: must be < max_frame_age_ms (500) (line 2)",
    ),
    ("mqtt-port-too-big", "mqtt:\n  port: 70000\n" + CAM, "mqtt.port: must be <= 65535 (line 2)"),
    (
        "mqtt-port-string",
        "mqtt:\n  port: mqtt\n" + CAM,
        "mqtt.port: must be an integer (got 'mqtt') (line 2)",
    ),
    ("metrics-port-negative", "metrics:\n  port: -1\n" + CAM, "metrics.port: must be >= 0 (line 2)"),
    (
        "mqtt-host-url",
        "mqtt:\n  host: mqtt://broker\n" + CAM,
        "mqtt.host: must be a host name or address, not a URL (got 'mqtt://broker') (line 2)",
    ),
    (
        "topic-prefix-wildcard",
        "mqtt:\n  topic_prefix: home/#\n" + CAM,
        "mqtt.topic_prefix: must be an MQTT topic without wildcards, empty levels or leading $ "
        "(got 'home/#') (line 2)",
    ),
    (
        "topic-prefix-leading-slash",
        "mqtt:\n  topic_prefix: /home\n" + CAM,
        "mqtt.topic_prefix: must be an MQTT topic without wildcards, empty levels or leading $ "
        "(got '/home') (line 2)",
    ),
    (
        "client-id-space",
        "mqtt:\n  client_id: my daemon\n" + CAM,
        "mqtt.client_id: must be 1-64 characters of A-Z a-z 0-9 _ . - (got 'my daemon') (line 2)",
    ),
    (
        "password-file-missing",
        "mqtt:\n  password_file: secrets/mqtt\n" + CAM,
        "mqtt.password_file: no such file: {dir}/secrets/mqtt (line 2)",
    ),
    (
        # config.yaml itself stands in for a certificate file that exists
        "tls-cert-without-key",
        "mqtt:\n  tls:\n    cert_file: config.yaml\n" + CAM,
        "mqtt.tls.cert_file: set without key_file (a client certificate needs its key) (line 3)",
    ),
    ("section-not-mapping", "mqtt: localhost\n" + CAM, "mqtt: must be a mapping (got 'localhost') (line 1)"),
    (
        "imgsz-not-multiple-of-32",
        "model:\n  imgsz: 100\n" + CAM,
        "model.imgsz: must be a multiple of 32 between 32 and 4096 (got 100) (line 2)",
    ),
    (
        "imgsz-wrong-shape",
        "model:\n  imgsz: [640, 480, 3]\n" + CAM,
        "model.imgsz: must be an integer or [height, width] (got [640, 480, 3]) (line 2)",
    ),
    (
        "device-unknown",
        "model:\n  device: gpu\n" + CAM,
        "model.device: must be auto, cpu, cuda, cuda:N or mps (got 'gpu') (line 2)",
    ),
    ("conf-above-one", "model:\n  conf: 25\n" + CAM, "model.conf: must be <= 1 (line 2)"),
    (
        "half-not-bool",
        "model:\n  half: maybe\n" + CAM,
        "model.half: must be true or false (got 'maybe') (line 2)",
    ),
    (
        "precision-unknown",
        "model:\n  precision: int4\n" + CAM,
        "model.precision: must be one of auto, fp32, fp16 or bf16 (got 'int4') (line 2)",
    ),
    (
        "half-against-precision",
        "model:\n  precision: bf16\n  half: true\n" + CAM,
        "model.half: says fp16 while model.precision says bf16: give only precision (line 3)",
    ),
    (
        "precision-for-triton",
        "model:\n  path: grpc://triton:8001/yolov8n\n  precision: fp16\n" + CAM,
        "model.precision: a Triton server runs the precision its model config says: leave this auto (line 3)",
    ),
    (
        "classes-empty",
        "model:\n  classes: []\n" + CAM,
        "model.classes: must not be empty (leave it out to report every class) (line 2)",
    ),
    (
        "log-level-unknown",
        "log_level: loud\n" + CAM,
        "log_level: must be one of debug, info, warning or error (got 'loud') (line 1)",
    ),
    (
        "zone-two-points",
        "cameras:\n  - name: a\n    url: rtsp://h/x\n    zones:\n      z: [[0, 0], [1, 1]]\n",
        "cameras[0].zones.z: a zone needs at least 3 points (got 2) (line 5)",
    ),
    (
        "zone-self-crossing",
        "cameras:\n  - name: a\n    url: rtsp://h/x\n    zones:\n      z: [[0, 0], [1, 1], [1, 0], [0, 1]]\n",
        "cameras[0].zones.z: the polygon crosses itself: list the points in order around its edge (line 5)",
    ),
    (
        "zone-not-normalised",
        "cameras:\n  - name: a\n    url: rtsp://h/x\n    zones:\n      z: [[0, 0], [640, 0], [1, 1]]\n",
        "cameras[0].zones.z[1]: coordinates are normalised: each must be within 0..1 (got [640, 0]) (line 5)",
    ),
    (
        "zone-bad-name",
        "cameras:\n  - name: a\n    url: rtsp://h/x\n    zones:\n      Drive Way: [[0, 0], [1, 0], [1, 1]]\n",
        "cameras[0].zones.Drive Way: the name must be 1-64 characters of a-z 0-9 _ - "
        "(got 'Drive Way') (line 5)",
    ),
    (
        "line-three-points",
        "cameras:\n  - name: a\n    url: rtsp://h/x\n    lines:\n      g: [[0, 0], [1, 1], [1, 0]]\n",
        "cameras[0].lines.g: a line is exactly 2 points, p1 -> p2 (got 3) (line 5)",
    ),
    (
        "alert-unknown-zone",
        ZC + "alerts:\n  - {name: r, zone: driveway}\n",
        "alerts[0].zone: no camera has a zone named 'driveway' (line 7)",
    ),
    (
        "alert-camera-lacks-zone",
        ZC + "  - {name: b, url: rtsp://h/y}\nalerts:\n  - {name: r, cameras: [a, b], zone: drive}\n",
        "alerts[0].zone: camera 'b' has no zone 'drive' (zones: none) (line 8)",
    ),
    (
        "alert-unknown-line",
        ZC + "alerts:\n  - {name: r, line: gat}\n",
        "alerts[0].line: no camera has a line named 'gat' (line 7)",
    ),
    (
        "alert-unknown-camera",
        ZC + "alerts:\n  - name: r\n    cameras: [a, frontdoor]\n",
        "alerts[0].cameras[1]: no camera named 'frontdoor' (cameras: a) (line 8)",
    ),
    (
        "alert-unknown-label",
        ZC + "alerts:\n  - name: r\n    labels: [persn]\n",
        "alerts[0].labels[0]: 'persn' is not a class the model reports (did you mean 'person'?) (line 8)",
    ),
    (
        "alert-label-outside-classes",
        "model:\n  classes: [person]\n" + ZC + "alerts:\n  - name: r\n    labels: [car]\n",
        "alerts[0].labels[0]: 'car' is not a class the model reports (line 10)",
    ),
    (
        "alert-zone-and-line",
        ZC + "alerts:\n  - name: r\n    zone: drive\n    line: gate\n",
        "alerts[0].line: a rule has a zone or a line, not both (line 9)",
    ),
    (
        "alert-direction-without-line",
        ZC + "alerts:\n  - name: r\n    zone: drive\n    direction: in\n",
        "alerts[0].direction: only meaningful with `line` (line 9)",
    ),
    (
        "alert-duplicate-name",
        ZC + "alerts:\n  - {name: r}\n  - {name: r}\n",
        "alerts[1].name: duplicate rule name 'r' (also alerts[0]) (line 8)",
    ),
    (
        "alert-end-after-zero",
        ZC + "alerts:\n  - name: r\n    end_after_s: 0\n",
        "alerts[0].end_after_s: must be > 0 (line 8)",
    ),
    (
        "motion-mask-two-points",
        "cameras:\n  - name: a\n    url: rtsp://h/x\n    motion:\n      mask: [[[0, 0], [1, 1]]]\n",
        "cameras[0].motion.mask[0]: a zone needs at least 3 points (got 2) (line 5)",
    ),
    (
        "motion-min-area-over-1",
        "cameras:\n  - name: a\n    url: rtsp://h/x\n    motion: {enabled: true, min_area: 2}\n",
        "cameras[0].motion.min_area: must be <= 1 (line 4)",
    ),
    (
        "triton-url-without-port",
        "model:\n  path: grpc://triton/yolo\n" + CAM,
        "model.path: a Triton URL needs a host and a port, e.g. grpc://triton:8001/yolov8n "
        "(got 'grpc://triton/yolo') (line 2)",
    ),
    (
        "triton-backend-with-a-file",
        "model:\n  backend: triton\n" + CAM,
        "model.path: backend triton needs a grpc://HOST:PORT/MODEL or http://HOST:PORT/MODEL URL (line 1)",
    ),
    ("max-inflight-zero", "model:\n  max_inflight: 0\n" + CAM, "model.max_inflight: must be >= 1 (line 2)"),
]


@pytest.mark.parametrize(
    ("text", "expected"), [case[1:] for case in BROKEN], ids=[case[0] for case in BROKEN]
)
def test_broken_config_gives_one_located_line(tmp_path: Path, text: str, expected: str) -> None:
    """A config with exactly one mistake yields exactly that problem, by key path and YAML line."""
    problems = problems_of(tmp_path, text)
    assert len(problems) == 1, problems
    expected = expected.replace("{dir}", str(tmp_path))
    if NOT_YET in expected:
        assert problems[0].startswith(expected), problems
        assert problems[0].endswith(")") and "(line " in problems[0]
    else:
        assert problems[0] == expected


BROKEN_FILES = [
    ("empty-file", "", "the top level must be a mapping of sections (got an empty file)"),
    ("only-comments", "# nothing here\n", "the top level must be a mapping of sections (got an empty file)"),
    ("top-level-list", "- a\n- b\n", "the top level must be a mapping of sections (got a list)"),
    ("top-level-scalar", "hello\n", "the top level must be a mapping of sections (got a string)"),
    (
        "yaml-syntax",
        "cameras:\n  - name: a\n    url: [x\n",
        "invalid YAML: expected ',' or ']', but got '<stream end>' "
        "(line 4; while parsing a flow sequence on line 3)",
    ),
    (
        "yaml-tab-indent",
        "cameras:\n\t- name: a\n",
        "invalid YAML: found character '\\t' that cannot start any token (line 2)",
    ),
    ("yaml-two-documents", "a: 1\n---\nb: 2\n", "invalid YAML: but found another document (line 2;"),
]


@pytest.mark.parametrize(
    ("text", "expected"), [c[1:] for c in BROKEN_FILES], ids=[c[0] for c in BROKEN_FILES]
)
def test_unusable_file_gives_one_line_naming_the_file(tmp_path: Path, text: str, expected: str) -> None:
    problems = problems_of(tmp_path, text)
    assert len(problems) == 1
    assert problems[0].startswith(f"{tmp_path / 'config.yaml'}: {expected}")


def test_missing_unreadable_and_binary_files(tmp_path: Path) -> None:
    """1. a path that does not exist, 2. a directory, 3. bytes that are not UTF-8: one line each."""
    cases = {
        tmp_path / "nope.yaml": "no such file",
        tmp_path: "cannot read (Is a directory)",
        tmp_path / "bin.yaml": "not a UTF-8 text file",
    }
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00")
    for path, message in cases.items():
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert info.value.problems == [f"{path}: {message}"]


def test_all_problems_are_reported_at_once_in_file_order(tmp_path: Path) -> None:
    """1. A file with mistakes in several sections and cameras.
    2. Every mistake is listed, one line each, top to bottom as in the file; str() joins them."""
    text = """\
        model:
          device: gpu
        batching:
          max_batch: 0
        cameras:
          - name: a
            url: ftp://h/x
            detect_fps: 0
          - name: b
            url: rtsp://h/x
            detct_fps: 5
        mqtt:
          port: 0
        """
    problems = problems_of(tmp_path, text)
    assert problems == [
        "model.device: must be auto, cpu, cuda, cuda:N or mps (got 'gpu') (line 2)",
        "batching.max_batch: must be > 0 (line 4)",
        "cameras[0].url: unsupported scheme 'ftp://' (use rtsp://, rtsps:// or a file path) (line 7)",
        "cameras[0].detect_fps: must be > 0 (line 8)",
        "cameras[1].detct_fps: unknown key 'detct_fps' (did you mean 'detect_fps'?) (line 11)",
        "mqtt.port: must be >= 1 (line 13)",
    ]
    path = tmp_path / "config.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == "\n".join(problems)


def test_example_config_loads(tmp_path: Path) -> None:
    """The shipped example, installed as docs/install.md does: camera passwords in files beside it."""
    shutil.copy(REPO / "configs" / "example.yaml", tmp_path / "config.yaml")
    (tmp_path / "cameras").mkdir()
    for name in ("front_door", "viewer"):
        (tmp_path / "cameras" / f"{name}.password").write_text("pw\n")
    cfg = load_config(tmp_path / "config.yaml")
    assert len(cfg.cameras) == 4
    assert all(cam.password_file and cam.password_file.parent == tmp_path / "cameras" for cam in cfg.cameras)
    assert all(not cam.is_file for cam in cfg.cameras)
    assert cfg.mqtt.password_file is None


def test_relative_paths_are_resolved_against_the_config_directory(tmp_path: Path, monkeypatch) -> None:
    """1. A config in etc/ names a clip and a password file relative to itself.
    2. Loaded from another working directory, both are stored as absolute paths under etc/."""
    etc = tmp_path / "etc"
    (etc / "clips").mkdir(parents=True)
    (etc / "clips" / "front.mp4").write_bytes(b"")
    (etc / "mqtt_password").write_text("pw\n")
    (etc / "config.yaml").write_text(
        "mqtt: {password_file: mqtt_password}\ncameras:\n  - {name: a, url: clips/front.mp4}\n"
    )
    monkeypatch.chdir(tmp_path)
    cfg = load_config("etc/config.yaml")
    assert cfg.cameras[0].url == str(etc / "clips" / "front.mp4")
    assert cfg.cameras[0].is_file
    assert cfg.mqtt.password_file == etc / "mqtt_password"


def test_models_built_in_code_get_cross_field_checks_but_no_file_checks() -> None:
    """Config.model_validate (as the demo does) runs the same cross-field checks as the loader;
    file paths are taken as they are unless a base_dir is given."""
    cfg = Config.model_validate({"cameras": [{"name": "a", "url": "no/such/clip.mp4"}]})
    assert cfg.cameras[0].url == "no/such/clip.mp4"
    with pytest.raises(ValidationError, match="max_wait_ms: must be < max_frame_age_ms"):
        Config.model_validate(
            {"batching": {"max_wait_ms": 50, "max_frame_age_ms": 20}, "cameras": [{"name": "a", "url": "x"}]}
        )
    with pytest.raises(ConfigError, match=r"^cameras: no camera is enabled$"):
        validate_config({"cameras": [{"name": "a", "url": "rtsp://h/x", "enabled": False}]})


def test_check_config_prints_ok_or_problems(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(CAM)
    bad.write_text("batching: {max_batch: 0}\n" + CAM)
    out = io.StringIO()
    assert check_config(good, out) == 0
    assert check_config(bad, out) == 2
    assert out.getvalue() == f"{good}: OK (1 camera)\nbatching.max_batch: must be > 0 (line 1)\n"


REDACT = [
    ("rtsp://user:pass@10.0.0.5:554/stream1", "rtsp://***@10.0.0.5:554/stream1"),
    ("rtsp://user@host/s", "rtsp://***@host/s"),
    ("rtsps://u:p@h:7441/x", "rtsps://***@h:7441/x"),
    ("rtsp://admin:p@ss@host/s", "rtsp://***@host/s"),
    ("rtsp://host/s?user=admin&password=secret", "rtsp://host/s?user=***&password=***"),
    ("rtsp://host:554/stream1", "rtsp://host:554/stream1"),
    ("rtsp://***@host/s", "rtsp://***@host/s"),
    ("/videos/me@home.mp4", "/videos/me@home.mp4"),
    ("clips/front.mp4", "clips/front.mp4"),
]


@pytest.mark.parametrize(("url", "expected"), REDACT, ids=[u for u, _ in REDACT])
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected
    assert redact_url(expected) == expected


def test_redact_text_scrubs_urls_inside_messages() -> None:
    """A PyAV error quoting the camera URL must not leak the password into the log."""
    msg = "Server returned 401 Unauthorized: 'rtsp://admin:p@ss@10.0.0.5/s' and rtsp://u:x@h2/y?pwd=z ok"
    assert (
        redact_text(msg)
        == "Server returned 401 Unauthorized: 'rtsp://***@10.0.0.5/s' and rtsp://***@h2/y?pwd=*** ok"
    )
    assert redact_text(redact_text(msg)) == redact_text(msg)
    assert redact_text("/videos/me@home.mp4 ended") == "/videos/me@home.mp4 ended"


def test_mqtt_password_precedence(tmp_path: Path) -> None:
    """1. password_file wins over the environment and systemd credentials.
    2. Then VISTREAM_MQTT_PASSWORD (empty counts as unset).
    3. Then $CREDENTIALS_DIRECTORY/mqtt_password.
    4. Nothing set: None. Exactly one trailing newline is stripped."""
    (tmp_path / "pw").write_text("from-file\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt_password").write_text("from-systemd\r\n")
    with_file = MqttConfig(password_file=tmp_path / "pw")
    plain = MqttConfig()
    env = {"VISTREAM_MQTT_PASSWORD": "from-env", "CREDENTIALS_DIRECTORY": str(creds)}
    assert mqtt_password(with_file, env) == "from-file"
    assert mqtt_password(plain, env) == "from-env"
    assert mqtt_password(plain, {**env, "VISTREAM_MQTT_PASSWORD": ""}) == "from-systemd"
    assert mqtt_password(plain, {}) is None
    assert mqtt_password(plain, {"CREDENTIALS_DIRECTORY": str(tmp_path / "empty")}) is None
    (tmp_path / "pw").write_text("two newlines\n\n")
    assert mqtt_password(with_file, {}) == "two newlines\n"


def test_docs_config_md_is_up_to_date() -> None:
    """docs/config.md is generated from the models; regenerate it with `python -m vistream.config.docs`."""
    current = docs.DOC_PATH.read_text(encoding="utf-8") if docs.DOC_PATH.exists() else ""
    assert current == docs.render(), "docs/config.md is out of date: run `python -m vistream.config.docs`"


def test_docs_cover_every_field() -> None:
    text = docs.render()
    for key in (
        "`cameras[].detect_fps`",
        "`mqtt.tls.key_file`",
        "`batching.max_frame_age_ms`",
        "`cameras[].zones`",
    ):
        assert key in text


def test_zones_lines_and_rules_are_accepted(tmp_path: Path) -> None:
    """1. Two cameras, one with a zone and a line; rules by zone, by line, by camera and for all.
    2. The config loads; each rule applies to the cameras that have its zone or line (or all);
       `state_dir` is taken from the config file's directory."""
    path = tmp_path / "config.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            state_dir: state
            cameras:
              - name: a
                url: rtsp://h/x
                zones: {drive: [[0, 0.5], [1, 0.5], [1, 1], [0, 1]]}
                lines: {gate: [[0.5, 0], [0.5, 1]]}
              - {name: b, url: rtsp://h/y}
            alerts:
              - {name: in_drive, labels: [person], zone: drive, min_duration_s: 2}
              - {name: through_gate, line: gate, direction: in}
              - {name: anything_on_b, cameras: [b], min_count: 3}
              - {name: anywhere}
            """
        )
    )
    cfg = load_config(path)
    assert cfg.state_dir == tmp_path / "state"
    assert cfg.cameras[0].zones["drive"][0] == (0, 0.5)
    assert cfg.cameras[0].lines["gate"] == ((0.5, 0), (0.5, 1))
    assert [cfg.rule_cameras(r) for r in cfg.alerts] == [["a"], ["a"], ["b"], ["a", "b"]]
