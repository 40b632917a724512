"""Secrets: read at the moment they are needed, never stored in the config or printed.

The MQTT password comes from, in order: `mqtt.password_file`, the environment
variable `VISTREAM_MQTT_PASSWORD`, the systemd credential `mqtt_password`
(`LoadCredential=` puts it in `$CREDENTIALS_DIRECTORY`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from vistream.config.models import ConfigError, MqttConfig

PASSWORD_ENV = "VISTREAM_MQTT_PASSWORD"
CREDENTIAL_NAME = "mqtt_password"

# userinfo ends at the last "@" before the path, as in ffmpeg's av_url_split and urllib,
# so a password holding an unencoded "@" is redacted whole.
_USERINFO_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#]*@")
# The same inside free text (an ffmpeg/PyAV error message quoting the URL): userinfo cannot
# contain white space or quotes there, which is where such a URL ends.
_TEXT_USERINFO_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^\s/?#'\"<>]*@")
# Some cameras take credentials in the query string instead (…?user=admin&password=x).
_QUERY_SECRET_RE = re.compile(
    r"([?&;](?:user|username|password|passwd|pwd|pass)=)[^&;#\s'\"<>]*", re.IGNORECASE
)


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


def redact_url(url: str) -> str:
    """`rtsp://user:pass@host/s` -> `rtsp://***@host/s`; file paths and redacted URLs are left as they are."""
    if "://" not in url:
        return url
    return _QUERY_SECRET_RE.sub(r"\1***", _USERINFO_RE.sub(r"\1***@", url))


def redact_text(text: str) -> str:
    """Every URL's credentials in `text` (a log line, an exception message) replaced by `***`."""
    if "://" not in text:
        return text
    return _QUERY_SECRET_RE.sub(r"\1***", _TEXT_USERINFO_RE.sub(r"\1***@", text))


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
