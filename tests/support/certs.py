"""Throw-away TLS material for tests, made with the openssl command line tool (no Python dependency).

`ca = CertificateAuthority.create(tmp_path, "test-ca")` makes a self-signed CA; `ca.issue("broker")`
a server certificate and key it signs, for 127.0.0.1 and localhost unless other names are given.
P-256 keys: quick to make, and what a small broker is often given today.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

LOCAL_NAMES = ("IP:127.0.0.1", "DNS:localhost")
DAYS = "2"


def missing_dependency() -> str | None:
    """Why no certificate can be made on this machine, or None when one can."""
    return None if shutil.which("openssl") else "openssl not found (Debian package openssl)"


@dataclass(frozen=True)
class CertificateAuthority:
    cert: Path
    key: Path

    @classmethod
    def create(cls, folder: Path, name: str) -> CertificateAuthority:
        cert, key = folder / f"{name}.crt", folder / f"{name}.key"
        _openssl(
            "req", "-x509", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", key, "-out", cert, "-days", DAYS, "-subj", f"/CN={name}",
            # What a strict verifier (Python 3.13's VERIFY_X509_STRICT) wants of a CA.
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )  # fmt: skip
        return cls(cert, key)

    def issue(self, name: str, names: Sequence[str] = LOCAL_NAMES) -> tuple[Path, Path]:
        """A server certificate for `names` (subjectAltName entries: "IP:…", "DNS:…"); (cert, key)."""
        folder = self.cert.parent
        cert, key, csr, ext = (folder / f"{name}.{suffix}" for suffix in ("crt", "key", "csr", "ext"))
        # Clients match the host against subjectAltName only; the CN is ignored, so it says nothing.
        ext.write_text(
            f"subjectAltName={','.join(names)}\n"
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature\n"
            "extendedKeyUsage=serverAuth\n"
            "subjectKeyIdentifier=hash\n"
            "authorityKeyIdentifier=keyid\n"
        )
        _openssl(
            "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", key, "-out", csr, "-subj", f"/CN={name}",
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", csr, "-CA", self.cert, "-CAkey", self.key, "-CAcreateserial",
            "-out", cert, "-days", DAYS, "-extfile", ext,
        )  # fmt: skip
        return cert, key


def _openssl(*args: str | Path) -> None:
    done = subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {done.stderr.strip()}")
