"""The export cache and the choice of backend, without exporting anything: a fake builder stands in
for Ultralytics' exporter and counts its calls."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from vistream.config.models import ModelConfig
from vistream.detector import ModelLoadError, export, load_detector, missing_runtime, resolve_backend
from vistream.detector.export import (
    MANIFEST,
    BrokenExport,
    ExportCache,
    ExportSpec,
    default_cache_dir,
    file_sha256,
)


class FakeExporter:
    """Writes an OpenVINO-like directory (two files) and counts how often it was asked to."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, into: Path) -> Path:
        self.calls += 1
        art = into / "model_openvino_model"
        art.mkdir()
        (art / "model.xml").write_text(f"<net build='{self.calls}'/>")
        (art / "model.bin").write_bytes(b"\0" * 64)
        return art


def spec_for(model: Path, **changes: object) -> ExportSpec:
    fields: dict = {
        "model_sha256": file_sha256(model),
        "model_stem": model.stem,
        "format": "openvino",
        "imgsz": (384, 640),
        "batch": 4,
        "half": False,
        "ultralytics": "8.4.190",
    }
    return ExportSpec(**(fields | changes))


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "yolo.pt"
    path.write_bytes(b"weights v1")
    return path


def test_second_start_is_a_cache_hit(tmp_path: Path, model: Path) -> None:
    """1. The first start exports into the cache; 2. the next start with the same model, shape,
    batch and precision gets the same artifact without exporting; no temporary directory is left."""
    cache, build = ExportCache(tmp_path / "cache"), FakeExporter()
    first, hit1 = cache.get(spec_for(model), build)
    second, hit2 = cache.get(spec_for(model), build)
    assert (hit1, hit2, build.calls) == (False, True, 1)
    assert first == second and (first / "model.xml").is_file()
    assert [p.name for p in cache.root.iterdir()] == [spec_for(model).entry_name]


def test_changed_model_file_is_a_miss(tmp_path: Path, model: Path) -> None:
    """1. Export model v1; 2. the file is replaced by other weights under the same name;
    3. the next start exports again, into a new entry (keyed by the content, not the name)."""
    cache, build = ExportCache(tmp_path / "cache"), FakeExporter()
    v1, _ = cache.get(spec_for(model), build)
    model.write_bytes(b"weights v2")
    v2, hit = cache.get(spec_for(model), build)
    assert not hit and build.calls == 2 and v1.parent != v2.parent


@pytest.mark.parametrize(
    "change",
    [{"imgsz": (480, 640)}, {"batch": 8}, {"half": True}, {"ultralytics": "8.4.191"}, {"format": "onnx"}],
)
def test_each_export_parameter_is_in_the_key(model: Path, change: dict) -> None:
    assert spec_for(model).key != spec_for(model, **change).key


def corrupt_truncated(entry: Path) -> None:
    (entry / "model_openvino_model" / "model.bin").write_bytes(b"\0" * 10)


def corrupt_flipped_bytes(entry: Path) -> None:
    weights = entry / "model_openvino_model" / "model.bin"
    weights.write_bytes(b"\1" + weights.read_bytes()[1:])  # same size, other content


def corrupt_missing_manifest(entry: Path) -> None:
    (entry / MANIFEST).unlink()


def corrupt_garbled_manifest(entry: Path) -> None:
    (entry / MANIFEST).write_text("{not json")


def corrupt_missing_file(entry: Path) -> None:
    (entry / "model_openvino_model" / "model.xml").unlink()


def corrupt_other_key(entry: Path) -> None:
    manifest = json.loads((entry / MANIFEST).read_text())
    (entry / MANIFEST).write_text(json.dumps(manifest | {"key": "0" * 16}))


@pytest.mark.parametrize(
    "corrupt",
    [
        corrupt_truncated,
        corrupt_flipped_bytes,
        corrupt_missing_manifest,
        corrupt_garbled_manifest,
        corrupt_missing_file,
        corrupt_other_key,
    ],
)
def test_corrupt_entry_is_rebuilt(tmp_path: Path, model: Path, corrupt) -> None:
    """1. An entry is built; 2. it is damaged (a file cut short, changed or gone, the manifest gone, garbled
    or for another key: an export killed half-way, a full disk); 3. the next start builds it again
    in place, and the start after that is a hit on the rebuilt entry."""
    cache, build = ExportCache(tmp_path / "cache"), FakeExporter()
    artifact, _ = cache.get(spec_for(model), build)
    corrupt(cache.entry(spec_for(model)))
    rebuilt, hit = cache.get(spec_for(model), build)
    assert (hit, build.calls, rebuilt) == (False, 2, artifact)
    assert (rebuilt / "model.xml").read_text() == "<net build='2'/>"
    assert cache.get(spec_for(model), build) == (artifact, True)
    assert [p.name for p in cache.root.iterdir()] == [spec_for(model).entry_name]


def test_failed_export_leaves_nothing(tmp_path: Path, model: Path) -> None:
    """An exporter that dies half-way leaves no entry and no temporary directory behind."""
    cache = ExportCache(tmp_path / "cache")

    def dies(into: Path) -> Path:
        (into / "half.xml").write_text("<net")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        cache.get(spec_for(model), dies)
    assert list(cache.root.iterdir()) == []


def test_lost_race_uses_the_winners_entry(tmp_path: Path, model: Path) -> None:
    """Two daemons start at once: the one that renames second keeps the first one's entry."""
    cache, build = ExportCache(tmp_path / "cache"), FakeExporter()

    def slow_loser(into: Path) -> Path:
        cache.get(spec_for(model), build)  # the other process finishes first
        return build(into)

    artifact = cache.rebuild(spec_for(model), slow_loser)
    assert cache.lookup(spec_for(model)) == artifact
    assert (artifact / "model.xml").read_text() == "<net build='1'/>"
    assert [p.name for p in cache.root.iterdir()] == [spec_for(model).entry_name]


def test_default_cache_dir_follows_xdg(tmp_path: Path) -> None:
    assert default_cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "vistream" / "exports"
    assert default_cache_dir({}) == Path.home() / ".cache" / "vistream" / "exports"


@pytest.mark.parametrize(
    ("path", "device", "cuda", "have", "want"),
    [
        ("yolov8n.pt", "cpu", False, {"openvino"}, "openvino"),
        ("yolov8n.pt", "auto", False, {"openvino"}, "openvino"),
        ("yolov8n.pt", "cpu", False, set(), "torch"),
        ("yolov8n.pt", "auto", True, {"openvino", "tensorrt"}, "tensorrt"),
        ("yolov8n.pt", "cuda:1", True, {"openvino"}, "torch"),
        ("yolov8n.pt", "mps", False, {"openvino"}, "torch"),
        ("yolov8n.onnx", "cpu", False, {"openvino"}, "onnxruntime"),
        ("yolov8n_openvino_model/", "auto", False, set(), "openvino"),
        ("yolov8n.engine", "auto", True, set(), "tensorrt"),
    ],
)
def test_auto_backend(path: str, device: str, cuda: bool, have: set[str], want: str) -> None:
    assert resolve_backend(path, "auto", device, cuda, has=lambda m: m in have) == want


def test_explicit_backend_is_kept() -> None:
    assert resolve_backend("yolov8n.pt", "onnxruntime", "cpu", False, has=lambda m: False) == "onnxruntime"


def test_missing_runtime_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("vistream.detector.installed", lambda module: module != "openvino")
    assert missing_runtime("openvino") == (
        "model.backend: 'openvino' needs the openvino runtime, which is not installed: "
        "pip install vistream[openvino]"
    )
    assert missing_runtime("onnxruntime") is None


def test_missing_runtime_stops_the_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """`backend: openvino` without OpenVINO installed: a ModelLoadError (exit 3) with that one line,
    before anything is exported."""
    monkeypatch.setattr("vistream.detector.installed", lambda module: module != "openvino")
    cfg = ModelConfig(path="yolov8n.pt", device="cpu", backend="openvino")
    with pytest.raises(ModelLoadError, match=r"pip install vistream\[openvino\]$"):
        load_detector(cfg, 4)


def test_export_the_runtime_cannot_load_is_built_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """1. The cached export checks out but the runtime refuses it (BrokenExport: an engine built for
    another GPU); 2. load_detector builds it again once (`rebuild=True`) and uses that."""
    calls: list[bool] = []

    class Backend:
        def __init__(self, cfg: ModelConfig, max_batch: int, *, rebuild: bool = False) -> None:
            calls.append(rebuild)
            if not rebuild:
                raise BrokenExport("model.path: OpenVINO cannot read x.xml: bad weights")

    monkeypatch.setattr("vistream.detector.backend_class", lambda backend: Backend)
    monkeypatch.setattr("vistream.detector.installed", lambda module: True)
    detector = load_detector(ModelConfig(path="yolov8n.pt", device="cpu", backend="openvino"), 4)
    assert isinstance(detector, Backend) and calls == [False, True]


def test_cache_dir_is_relative_to_the_config_file(tmp_path: Path) -> None:
    cfg = ModelConfig.model_validate({"cache_dir": "exports"}, context={"base_dir": tmp_path})
    assert cfg.cache_dir == tmp_path / "exports"
    assert ModelConfig().cache_dir is None  # default_cache_dir() at load time, not at import


def test_entries_unused_for_a_month_go_when_another_is_built(tmp_path: Path, model: Path) -> None:
    """1. Entries for three shapes are built; the 384x640 one was last used 40 days ago, the
    480x640 one 20 days ago; an export was killed half-way two days ago (its temporary directory
    is left), and the cache folder also holds a folder that is not the cache's.
    2. A start hits the 640x640 entry: that stamps it as used.
    3. A start builds a new entry (batch 8): the entry unused for 40 days and the killed export's
       leftover are removed; the 20-day-old entry, the hit one, the new one and the foreign folder
       stay."""
    cache, build = ExportCache(tmp_path / "cache"), FakeExporter()
    old, recent, hit = (spec_for(model, imgsz=hw) for hw in ((384, 640), (480, 640), (640, 640)))
    for spec in (old, recent, hit):
        cache.get(spec, build)
    now = time.time()
    os.utime(cache.entry(old) / MANIFEST, (now - 40 * 86400,) * 2)
    os.utime(cache.entry(recent) / MANIFEST, (now - 20 * 86400,) * 2)
    os.utime(cache.entry(hit) / MANIFEST, (now - 40 * 86400,) * 2)
    killed = cache.root / f".{spec_for(model, batch=2).entry_name}.k1ll3d_x"
    killed.mkdir()
    os.utime(killed, (now - 2 * 86400,) * 2)
    (cache.root / "photos").mkdir()
    os.utime(cache.root / "photos", (now - 400 * 86400,) * 2)

    assert cache.get(hit, build)[1]
    new = spec_for(model, batch=8)
    cache.get(new, build)
    left = sorted(p.name for p in cache.root.iterdir())
    assert left == sorted([recent.entry_name, hit.entry_name, new.entry_name, "photos"])


def test_a_read_only_cache_is_used_without_stamping(
    tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cache the daemon may not write to (a shared read-only mount: stamping fails) still serves
    its hits."""
    cache, build = ExportCache(tmp_path / "cache"), FakeExporter()
    artifact, _ = cache.get(spec_for(model), build)

    def read_only(*args: object, **kwargs: object) -> None:
        raise PermissionError(30, "Read-only file system")

    monkeypatch.setattr(export.os, "utime", read_only)
    assert cache.get(spec_for(model), build) == (artifact, True)
    assert build.calls == 1
