"""The export cache: Ultralytics exports of a model file, built once and reused on the next start.

An entry is a directory named by a key over everything that changes the export: the model file's
content (sha256), the format, the input shape, the batch size, the precision and the Ultralytics
version. It is built in a temporary directory beside where it will live and renamed into place in
one step, with a manifest of its files (size and sha256) written last, so an export killed half-way
leaves nothing that looks like an entry. An entry whose manifest is missing or unreadable, or whose
files are not the ones it lists (a size or a hash differs), is removed and built again. Checking
the hashes reads the entry once per start: YOLOv8n's 12 MB take about 20 ms.

The cache does not grow for good: every hit stamps its entry as used (the manifest's mtime), and
each new entry built removes the entries nobody used for `UNUSED_DAYS` (a model or shape no daemon
on the host runs any more, an Ultralytics release left behind) and leftovers of exports killed
half-way. A daemon that runs longer than that without a restart keeps its model loaded; only its
next start exports again.

The default place is `$XDG_CACHE_HOME/vistream/exports` (`~/.cache/...` without it; the shipped
systemd unit sets XDG_CACHE_HOME to its `CacheDirectory=`); `model.cache_dir` overrides it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from vistream.detector.base import ModelLoadError

log = logging.getLogger(__name__)

MANIFEST = "vistream-export.json"
MANIFEST_VERSION = 2
UNUSED_DAYS = 30  # an entry no start used for this long is removed when another one is built
# What prune may touch (`model.cache_dir` may be a folder that holds other things too): entries
# (see ExportSpec.entry_name) with a manifest, and the temporary and stale directories of entries.
ENTRY_RE = re.compile(r"[^/]+-\d+x\d+-b\d+-fp(16|32)-[0-9a-f]{16}")
LEFTOVER_RE = re.compile(rf"\.{ENTRY_RE.pattern}\.(stale-\d+-\d+|\w{{8}})")
LEFTOVER_S = 86400.0  # a temporary directory this old is an export that was killed, not one running


class BrokenExport(ModelLoadError):
    """A cached export checked out but its runtime cannot load it (bytes flipped on disk, an engine
    built for another GPU or TensorRT version): `load_detector` builds it again, once."""


def default_cache_dir(environ: dict[str, str] | None = None) -> Path:
    """`$XDG_CACHE_HOME/vistream/exports`, `~/.cache/vistream/exports` when it is unset."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vistream" / "exports"


def file_sha256(path: Path) -> str:
    """The content hash of a model file (a directory export is hashed file by file, in name order)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        digest.update(str(f.relative_to(path)).encode() if path.is_dir() else b"")
        with f.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class ExportSpec:
    """Everything an export depends on; two specs with equal fields share a cache entry."""

    model_sha256: str
    model_stem: str  # only for a readable entry name
    format: str  # Ultralytics' export format: onnx, openvino, engine
    imgsz: tuple[int, int]  # (height, width)
    batch: int
    half: bool
    ultralytics: str  # its version: exporters change between releases

    @property
    def key(self) -> str:
        fields = asdict(self) | {"model_stem": None, "imgsz": list(self.imgsz)}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def entry_name(self) -> str:
        h, w = self.imgsz
        precision = "fp16" if self.half else "fp32"
        return f"{self.model_stem}-{self.format}-{h}x{w}-b{self.batch}-{precision}-{self.key}"


# Builds the export into the (empty) directory it is given; returns the artifact's path inside it.
Builder = Callable[[Path], Path]


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


class ExportCache:
    def __init__(self, root: Path) -> None:
        self.root = root

    def entry(self, spec: ExportSpec) -> Path:
        return self.root / spec.entry_name

    def lookup(self, spec: ExportSpec) -> Path | None:
        """The artifact of a complete entry for `spec`, or None (no entry, or one that does not check out)."""
        entry = self.entry(spec)
        try:
            manifest = json.loads((entry / MANIFEST).read_text())
            if manifest.get("version") != MANIFEST_VERSION or manifest.get("key") != spec.key:
                return None
            for rel, (size, sha256) in manifest["files"].items():
                if (entry / rel).stat().st_size != size or file_sha256(entry / rel) != sha256:
                    return None
            artifact = entry / manifest["artifact"]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        return artifact if artifact.exists() else None

    def get(self, spec: ExportSpec, build: Builder) -> tuple[Path, bool]:
        """The artifact for `spec` and whether it came from the cache; built (and kept) when it did not."""
        if (artifact := self.lookup(spec)) is not None:
            log.info("export cache hit: %s", self.entry(spec))
            self._stamp(spec)
            return artifact, True
        return self.rebuild(spec, build), False

    def _stamp(self, spec: ExportSpec) -> None:
        """Record a use (the manifest's mtime: the manifest lists the entry's other files, not itself)."""
        try:
            os.utime(self.entry(spec) / MANIFEST)
        except OSError as exc:  # a read-only cache: it is used, not pruned, which is fine
            log.debug("cannot stamp %s: %s", self.entry(spec), exc)

    def prune(self, keep: ExportSpec, now: float | None = None) -> list[str]:
        """Remove the entries unused for UNUSED_DAYS and the leftovers of killed exports (`keep`
        stays); returns the names removed."""
        now = time.time() if now is None else now
        removed = []
        for path in sorted(self.root.iterdir()) if self.root.is_dir() else ():
            if path.name == keep.entry_name or not path.is_dir():
                continue
            leftover = LEFTOVER_RE.fullmatch(path.name) is not None  # of rebuild or remove
            if not leftover and not ENTRY_RE.fullmatch(path.name):
                continue
            try:
                if leftover:
                    old = now - path.stat().st_mtime > LEFTOVER_S
                else:  # last used when its manifest was stamped
                    old = now - (path / MANIFEST).stat().st_mtime > UNUSED_DAYS * 86400
            except OSError:  # no manifest: not an entry of ours (rebuild writes it before the rename)
                continue
            if old:
                self._discard(path, aside=not leftover)
                removed.append(path.name)
        if removed:
            log.info("export cache: removed %d unused: %s", len(removed), ", ".join(removed))
        return removed

    def rebuild(self, spec: ExportSpec, build: Builder) -> Path:
        """Build the entry for `spec`, replacing whatever is there."""
        entry = self.entry(spec)
        if entry.exists():
            log.warning("export cache entry %s is incomplete or corrupt: building it again", entry)
            self.remove(spec)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{spec.entry_name}.", dir=self.root))
        try:
            t0 = time.monotonic()
            rel = build(tmp).relative_to(tmp)
            files = {str(p.relative_to(tmp)): (p.stat().st_size, file_sha256(p)) for p in _files(tmp)}
            manifest = {
                "version": MANIFEST_VERSION,
                "key": spec.key,
                "spec": asdict(spec),
                "artifact": str(rel),
                "files": files,
                "export_s": round(time.monotonic() - t0, 2),
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            try:
                tmp.rename(entry)  # atomic: the entry appears whole or not at all
            except OSError:  # another process built it meanwhile: use theirs if it checks out
                if self.lookup(spec) is None:
                    raise
                log.info("export cache entry %s was built by another process meanwhile", entry)
            else:
                log.info("exported %s in %.1fs into %s", spec.format, manifest["export_s"], entry)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self.prune(keep=spec)
        return entry / rel

    def remove(self, spec: ExportSpec) -> None:
        self._discard(self.entry(spec))

    @staticmethod
    def _discard(path: Path, aside: bool = True) -> None:
        """Delete a directory; an entry is renamed aside first, so no reader ever sees half of it
        deleted (a leftover, which nothing reads, is deleted where it is)."""
        if aside:
            moved = path.with_name(f".{path.name}.stale-{os.getpid()}-{time.monotonic_ns()}")
            try:
                path.rename(moved)
            except FileNotFoundError:
                return
            path = moved
        shutil.rmtree(path, ignore_errors=True)
