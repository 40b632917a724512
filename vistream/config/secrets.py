"""Secrets: read at the moment they are needed, never stored in the config or printed.

The MQTT password comes from, in order: `mqtt.password_file`, the environment
variable `VISTREAM_MQTT_PASSWORD`, the systemd credential `mqtt_password`
(`LoadCredential=` puts it in `$CREDENTIALS_DIRECTORY`). A camera's password comes from its
`password_file`, read by the daemon each time it starts the camera's reader and handed to the
reader in its process arguments (`camera_url`), never through the environment.

Redaction (`redact_text`, `RedactFilter`) covers what is printed or served: URL userinfo and
secret query parameters, in log messages, tracebacks and the HTTP API's strings.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

from vistream.config.models import CameraConfig, ConfigError, MqttConfig

PASSWORD_ENV = "VISTREAM_MQTT_PASSWORD"
CREDENTIAL_NAME = "mqtt_password"

# userinfo ends at the last "@" before the path, as in ffmpeg's av_url_split and urllib,
# so a password holding an unencoded "@" is redacted whole.
_USERINFO_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#]*@")
# The same inside free text (an ffmpeg/PyAV error message quoting the URL, a traceback): there a
# URL ends at white space. Quotes may be part of a password (`pa'ss`), so they do not end it: a
# quote before the URL is not in the match, and a quoted URL's closing quote comes after "@".
_TEXT_USERINFO_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^\s/?#]*@")
# Credentials in a query string (cameras that take `?user=admin&password=x`, tokens of cloud
# relays): the value runs to the next parameter or white space.
# Matched outside a URL too (`token=abc`, `--password=x`, `client_secret=y` in a message): a word
# ending in one of these names, then "=".
SECRET_PARAMS = (
    "user", "username", "pass", "passwd", "password", "pwd", "token", "auth", "authorization",
    "apikey", "api_key", "key", "secret", "signature", "sig",
)  # fmt: skip
_SECRET_NAME = rf"(?<![\w-])[\w-]*?(?:{'|'.join(re.escape(p) for p in SECRET_PARAMS)})="
# A quote or colon ends the value only where the text goes on after it (`...token=abc': refused`);
# inside the value (`password=pa'ss`) it is part of the secret.
_SECRET_VALUE = r"""(?:[^&;#\s<>'":]|['":](?![\s,)'":]|$))*"""
_QUERY_SECRET_RE = re.compile(f"({_SECRET_NAME}){_SECRET_VALUE}", re.IGNORECASE)
REDACTED = "***"


def mqtt_password(cfg: MqttConfig, environ: Mapping[str, str] | None = None) -> str | None:
    """The broker password, or None when no source provides one."""
    env = os.environ if environ is None else environ
    if cfg.password_file is not None:
        return _read_secret(cfg.password_file, "mqtt.password_file")
    if env.get(PASSWORD_ENV):
        return env[PASSWORD_ENV]
    cred_dir = env.get("CREDENTIALS_DIRECTORY")
    if cred_dir and (Path(cred_dir) / CREDENTIAL_NAME).is_file():
        return _read_secret(Path(cred_dir) / CREDENTIAL_NAME, f"credential {CREDENTIAL_NAME}")
    return None


def camera_url(cam: CameraConfig) -> str:
    """The URL a reader opens: `cam.url` with `username` and the password from `password_file`
    (read now, so a changed file counts from the next start) spliced in, percent-encoded.

    Only for the reader's open call: never log it or show it (`redact_url` what is shown).
    Raises ConfigError when the file cannot be read.
    """
    if cam.username is None:
        return cam.url
    userinfo = quote(cam.username, safe="")
    if cam.password_file is not None:
        secret = _read_secret(cam.password_file, f"camera {cam.name}: password_file")
        userinfo += ":" + quote(secret, safe="")
    scheme, rest = cam.url.split("://", 1)
    return f"{scheme}://{userinfo}@{rest}"


def redact_url(url: str) -> str:
    """`rtsp://user:pass@host/s` -> `rtsp://***@host/s`; file paths and redacted URLs are left as they are."""
    if "://" not in url:
        return url
    return _QUERY_SECRET_RE.sub(r"\1***", _USERINFO_RE.sub(r"\1***@", url))


def redact_text(text: str) -> str:
    """Every URL's credentials and every secret parameter (`token=...`) in `text` (a log line, an
    exception message, a traceback) replaced by `***`. The one redaction of everything the daemon
    prints or serves: `RedactFilter` on log records, the HTTP API on its strings."""
    if "://" in text:
        text = _TEXT_USERINFO_RE.sub(r"\1***@", text)
    if "=" not in text:
        return text
    return _QUERY_SECRET_RE.sub(r"\1***", text)


class RedactFilter(logging.Filter):
    """Redacts a record in place (message with its args, traceback, stack) and lets it pass.

    On every handler that writes or forwards records: the parent's (`vistream.ops.logs` formatters)
    and each child's pipe to the parent (`PipeHandler`), so a reader's traceback quoting its URL is
    redacted before it leaves the reader, and again where it is written.
    """

    _format = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: the handler reports it, with the raw msg
            message = None
        if message is not None:
            record.msg, record.args = redact_text(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._format.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        return True


def _read_secret(path: Path, what: str) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        # The file existed at load time; failing loudly beats connecting without a password.
        raise ConfigError([f"{what}: cannot read {path} ({exc.strerror or exc})"]) from None
    # Editors and `echo` add one newline; anything else may be part of the password.
    if text.endswith("\r\n"):
        return text[:-2]
    return text.removesuffix("\n")
