"""The KServe manifests (k8s/kserve/), checked without a cluster or kubectl.

Each ClusterServingRuntime and InferenceService is validated against the openAPIV3Schema of
KServe's own CRDs (tests/data/kserve/, copied from kserve/kserve), made as strict as an API server
with strict field validation: unknown fields refused wherever the schema is structural, required
fields present, types and integer ranges right, list-map keys unique; metadata against Kubernetes'
ObjectMeta. The ConfigMap goes through `kubernetes-validate --strict` like the other manifests.
Then the facts a user would notice across the files: the port the server is told to listen on is
the port KServe sends traffic to, the probes hit routes the server serves, an InferenceService's
model format and protocol are the runtime's, and the server accepts the flags, environment and
config each InferenceService ends up giving it.
"""

from __future__ import annotations

import copy
import re
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
KSERVE = ROOT / "k8s" / "kserve"
CRD_DIR = ROOT / "tests" / "data" / "kserve"
CRDS = {
    ("serving.kserve.io/v1alpha1", "ClusterServingRuntime"): "serving.kserve.io_clusterservingruntimes.yaml",
    ("serving.kserve.io/v1beta1", "InferenceService"): "serving.kserve.io_inferenceservices.yaml",
}
KINDS = {kind for _, kind in CRDS} | {"ConfigMap"}

# KServe's constants (pkg/constants, pkg/apis/serving/v1beta1/inference_service_validation.go).
CONTAINER = "kserve-container"
MODEL_MOUNT = "/mnt/models"
ISVC_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
STORAGE_URI_PREFIXES = ("gs://", "s3://", "pvc://", "file://", "https://", "http://", "hdfs://", "webhdfs://", "oci://")
KNATIVE_PORT_NAMES = {"", "http1", "h2c"}
DEFAULT_TERMINATION_GRACE_S = 30  # a ServingRuntime cannot set it; the pod default applies
INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the InferenceService CRD is 2 MB


# ---- the documents ------------------------------------------------------------------------------
@cache
def documents() -> tuple[tuple[str, dict[str, Any]], ...]:
    """(file name, object) for every YAML document under k8s/kserve/."""
    found = []
    for file in sorted(KSERVE.glob("*.y*ml")):
        found += [(file.name, d) for d in yaml.safe_load_all(file.read_text()) if d]
    return tuple(found)


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [d for _, d in documents() if d.get("kind") == kind]


def runtime() -> dict[str, Any]:
    runtimes = of_kind("ClusterServingRuntime")
    assert len(runtimes) == 1, f"expected one ClusterServingRuntime, found {len(runtimes)}"
    return runtimes[0]


def runtime_container() -> dict[str, Any]:
    containers = {c["name"]: c for c in runtime()["spec"]["containers"]}
    assert CONTAINER in containers, f"KServe merges the predictor into a container named {CONTAINER!r}"
    return containers[CONTAINER]


def services() -> list[tuple[str, dict[str, Any]]]:
    return [(f, d) for f, d in documents() if d.get("kind") == "InferenceService"]


def doc_id(item: tuple[str, dict[str, Any]]) -> str:
    file, d = item
    return f"{file}:{d.get('kind')}/{d.get('metadata', {}).get('name')}"


# ---- strict schemas -----------------------------------------------------------------------------
def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """A CRD's structural schema as JSON Schema refusing what a strict API server refuses."""
    s = dict(schema)
    s.update({k: strict(s[k]) for k in ("items", "additionalProperties", "not") if isinstance(s.get(k), dict)})
    s.update({k: [strict(x) for x in s[k]] for k in ("anyOf", "allOf", "oneOf") if k in s})
    if "properties" in s:
        s["properties"] = {k: strict(v) for k, v in s["properties"].items()}
    # Unknown fields are pruned by the API server, and refused under strict field validation.
    open_ended = "additionalProperties" in s or s.get("x-kubernetes-preserve-unknown-fields")
    if s.get("type") == "object" and not open_ended:
        s["additionalProperties"] = False
    if s.get("type") == "integer" and s.get("format") in INT_RANGES:
        s["minimum"], s["maximum"] = INT_RANGES[s["format"]]
    return s


@cache
def object_meta() -> dict[str, Any]:
    """Kubernetes' own strict ObjectMeta schema (from kubernetes-validate), else its common fields."""
    try:
        import kubernetes_validate.utils as kv
    except ImportError:
        text, strings = {"type": "string"}, {"type": "object", "additionalProperties": {"type": "string"}}
        props = {"name": text, "namespace": text, "labels": strings, "annotations": strings}
        return {"type": "object", "properties": props, "additionalProperties": False}
    version = kv.latest_version()
    defs = kv.schema_contents(f"kubernetes-json-schema/v{version}-local-strict/_definitions.json", version)
    return {"$ref": "#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta", "$defs": defs["$defs"]}


@cache
def crd_schema(api_version: str, kind: str) -> dict[str, Any]:
    assert (api_version, kind) in CRDS, f"no CRD in tests/data/kserve/ for {api_version} {kind}"
    crd = yaml.load((CRD_DIR / CRDS[api_version, kind]).read_text(), Loader=LOADER)
    group, version = api_version.split("/")
    assert (crd["spec"]["group"], crd["spec"]["names"]["kind"]) == (group, kind)
    served = {v["name"]: v for v in crd["spec"]["versions"] if v.get("served")}
    assert version in served, f"{kind} is served as {sorted(served)}, not {version}"
    schema = strict(served[version]["schema"]["openAPIV3Schema"])
    meta = object_meta()
    schema["properties"]["metadata"] = {k: v for k, v in meta.items() if k != "$defs"}
    if "$defs" in meta:
        schema["$defs"] = meta["$defs"]
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata", "spec"})
    return schema


def duplicate_keys(doc: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Entries of `x-kubernetes-list-type: map` (or `set`) lists that the API server refuses as duplicates."""
    problems: list[str] = []
    if isinstance(doc, dict):
        props, extra = schema.get("properties", {}), schema.get("additionalProperties")
        for key, value in doc.items():
            sub = props.get(key, extra if isinstance(extra, dict) else None)
            if sub:
                problems += duplicate_keys(value, sub, f"{path}/{key}")
    elif isinstance(doc, list) and isinstance(schema.get("items"), dict):
        kind, props = schema.get("x-kubernetes-list-type"), schema["items"].get("properties", {})
        names = schema.get("x-kubernetes-list-map-keys", [])  # a missing key takes its default, as in the API server
        keys = [repr(i if kind == "set" else [i.get(k, props.get(k, {}).get("default")) for k in names]) for i in doc]
        keys = keys if kind in ("map", "set") else []
        problems += [f"{path}: duplicate entry {k}" for k in sorted({k for k in keys if keys.count(k) > 1})]
        for i, item in enumerate(doc):
            problems += duplicate_keys(item, schema["items"], f"{path}/{i}")
    return problems


def schema_errors(doc: dict[str, Any]) -> list[str]:
    schema = crd_schema(doc.get("apiVersion", ""), doc.get("kind", ""))
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    found = [f"/{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]
    return found + duplicate_keys(doc, schema)


# ---- KServe's merge of runtime and InferenceService ---------------------------------------------
MERGE_KEYS = {"env": "name", "volumeMounts": "mountPath", "ports": "containerPort", "volumes": "name"}
MODEL_ONLY = {"modelFormat", "protocolVersion", "runtime", "runtimeVersion", "storageUri", "storage"}


def merge(base: Any, patch: Any, key: str = "") -> Any:
    """A strategic merge patch as KServe applies it: maps merged, keyed lists merged by key."""
    if isinstance(base, dict) and isinstance(patch, dict):
        return {k: merge(base[k], v, k) if k in base else v for k, v in patch.items()} | {
            k: v for k, v in base.items() if k not in patch
        }
    if isinstance(base, list) and isinstance(patch, list) and key in MERGE_KEYS:
        by_key = {item[MERGE_KEYS[key]]: item for item in base}
        for item in patch:
            k = item[MERGE_KEYS[key]]
            by_key[k] = merge(by_key[k], item) if k in by_key else item
        return list(by_key.values())
    return patch


def effective_container(isvc: dict[str, Any]) -> dict[str, Any]:
    """The predictor's container: MergeRuntimeContainers (args concatenated, runtime's first)."""
    model = {k: v for k, v in isvc["spec"]["predictor"]["model"].items() if k not in MODEL_ONLY}
    merged: dict[str, Any] = merge(copy.deepcopy(runtime_container()), {k: v for k, v in model.items() if k != "args"})
    merged["args"] = [*runtime_container().get("args", []), *model.get("args", [])]
    return merged


def effective_volumes(isvc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    volumes = merge(runtime()["spec"].get("volumes", []), isvc["spec"]["predictor"].get("volumes", []), "volumes")
    return {v["name"]: v for v in volumes}


def env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def served_routes() -> set[str]:
    routes = {
        r for f in (ROOT / "server").rglob("*.py") for r in re.findall(r'add_api_route\(\s*"([^"]+)"', f.read_text())
    }
    assert routes, "no add_api_route(...) under server/: update served_routes() to how routes are registered"
    return routes


def server_config(isvc: dict[str, Any], tmp_path: Path) -> Any:
    """The server's settings in the predictor pod: its own CLI parser and config loader, fed the
    merged command, args, environment and the mounted config file."""
    from server.cli import parser
    from server.config import from_args

    c, volumes = effective_container(isvc), effective_volumes(isvc)
    assert c["command"][0] == "modeldock", f"the runtime should run the modeldock CLI, got {c['command']}"
    args = parser().parse_args([*c["command"][1:], *c["args"]])
    assert args.command == "serve"
    environment = env(c)
    path = environment.get("MODELDOCK_CONFIG")
    if path:
        mount = next((m for m in c.get("volumeMounts", []) if path.startswith(m["mountPath"].rstrip("/") + "/")), None)
        assert mount is not None, f"MODELDOCK_CONFIG={path} is not under any volume mount"
        assert "configMap" in volumes[mount["name"]], f"{path} should come from a ConfigMap"
        name, key = volumes[mount["name"]]["configMap"]["name"], path[len(mount["mountPath"].rstrip("/")) + 1 :]
        data = next((d["data"] for d in of_kind("ConfigMap") if d["metadata"]["name"] == name), {})
        assert key in data, f"{path}: no ConfigMap {name!r} with key {key!r} in k8s/kserve/"
        (tmp_path / "config.yaml").write_text(data[key])
        environment["MODELDOCK_CONFIG"] = str(tmp_path / "config.yaml")
    return from_args(args, environment)  # raises ConfigError naming a setting it refuses


def cpu_cores(quantity: str | int) -> float:
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def kserve_supports(spec: dict[str, Any], model: dict[str, Any]) -> bool:
    """KServe's ModelSpec.RuntimeSupportsModel: format labels, only auto-selectable ones unless named."""
    labels = set()
    for f in spec.get("supportedModelFormats", []):
        if model.get("runtime") or f.get("autoSelect"):
            labels |= {f["name"], *([f"{f['name']}:{f['version']}"] if "version" in f else [])}
    fmt = model["modelFormat"]
    return (fmt["name"] + (f":{fmt['version']}" if fmt.get("version") else "")) in labels


# ---- schemas ------------------------------------------------------------------------------------
def test_the_folder_holds_a_runtime_and_both_examples() -> None:
    kinds = {d.get("kind") for _, d in documents()}
    assert kinds <= KINDS, f"k8s/kserve/ has kinds this test does not validate: {sorted(kinds - KINDS)}"
    runtime()
    stores = {"storageUri" in d["spec"]["predictor"]["model"] for _, d in services()}
    assert stores == {True, False}, "one example with storageUri, one serving from the bucket"
    # test_deploy.py renders every kustomization under k8s/ as the whole app.
    assert not list(KSERVE.glob("kustomization.y*ml")) and not (KSERVE / "Kustomization").exists()


@pytest.mark.parametrize("item", [d for d in documents() if d[1].get("kind") != "ConfigMap"], ids=doc_id)
def test_documents_pass_kserve_crd_schemas(item: tuple[str, dict[str, Any]]) -> None:
    errors = schema_errors(item[1])
    assert not errors, f"k8s/kserve/{item[0]}:\n" + "\n".join(errors)


@pytest.mark.parametrize("item", [d for d in documents() if d[1].get("kind") == "ConfigMap"], ids=doc_id)
def test_config_maps_pass_strict_kubernetes_schema(item: tuple[str, dict[str, Any]]) -> None:
    kv = pytest.importorskip("kubernetes_validate.utils", reason="kubernetes-validate is not installed")
    kv.validate(item[1], kv.latest_version(), strict=True)  # raises naming the bad field


BROKEN = [
    ("ClusterServingRuntime", ["spec", "containers", 0, "bogus"], True, "/spec/containers/0: Additional properties"),
    ("ClusterServingRuntime", ["spec", "containers", 0, "ports", 0, "containerPort"], "80", "not of type 'integer'"),
    ("ClusterServingRuntime", ["spec", "containers"], None, "'containers' is a required property"),
    ("ClusterServingRuntime", ["spec", "protocolVersions"], "v2", "is not of type 'array'"),
    ("ClusterServingRuntime", ["spec", "containers", 0, "ports", 1], {"containerPort": 8080}, "duplicate entry"),
    ("ClusterServingRuntime", ["metadata", "labelz"], {}, "/metadata: Additional properties"),
    ("InferenceService", ["spec", "predictor", "model", "storageURI"], "s3://x", "Additional properties"),
    ("InferenceService", ["spec", "predictor", "model", "modelFormat", "name"], None, "'name' is a required property"),
    ("InferenceService", ["spec", "predictor", "minReplicas"], 2**31, "is greater than the maximum"),
]


@pytest.mark.parametrize(("kind", "path", "value", "message"), BROKEN, ids=[f"{b[0]}:{b[-1]}" for b in BROKEN])
def test_validation_refuses_broken_documents(kind: str, path: list[str | int], value: Any, message: str) -> None:
    doc = copy.deepcopy(of_kind(kind)[0])
    *parents, last = path
    node = doc
    for p in parents:
        node = node[p]
    if value is None:
        del node[last]
    elif isinstance(node, list):
        node.append(value)
    else:
        node[last] = value
    errors = schema_errors(doc)
    assert any(message in e for e in errors), f"expected an error with {message!r}, got {errors}"


# ---- the runtime --------------------------------------------------------------------------------
def test_runtime_speaks_v2_over_http_on_the_port_it_declares(tmp_path: Path) -> None:
    spec, c = runtime()["spec"], runtime_container()
    assert spec["protocolVersions"] == ["v2"], "REST v2 only; grpc-v2 once the server speaks gRPC"
    assert len(c["ports"]) == 1, "one serving port (Knative takes the first)"
    port = c["ports"][0]
    assert port["containerPort"] == 8080, "KServe's convention: traffic and default probes go to 8080"
    assert port.get("name", "") in KNATIVE_PORT_NAMES, f"Knative refuses the port name {port['name']!r}"
    cfg = server_config({"spec": {"predictor": {"model": {}}}}, tmp_path)
    assert cfg.host == "0.0.0.0", f"the server listens on {cfg.host}, unreachable from outside the pod"
    assert int(cfg.port) == port["containerPort"], f"the server listens on {cfg.port}, KServe sends to {port}"
    assert cfg.store == MODEL_MOUNT, "KServe's storage initializer fills /mnt/models"
    annotations = spec.get("annotations", {})
    assert annotations["prometheus.kserve.io/port"] == str(port["containerPort"])
    assert annotations["prometheus.kserve.io/path"] in served_routes()


def test_probes_hit_routes_the_server_serves() -> None:
    c, routes = runtime_container(), served_routes()
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    startup = c["startupProbe"]
    assert startup["httpGet"]["path"] in ("/v2/health/live", "/v2/health/ready")
    budget = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
    assert budget >= 120, f"startupProbe allows only {budget}s for the first model loads"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        get = c[probe]["httpGet"]
        assert get["path"] in routes, f"{probe} {get['path']} is not a route of the server ({sorted(routes)})"
        assert get["port"] in (c["ports"][0]["containerPort"], c["ports"][0].get("name")), f"{probe} port"
    assert "lifecycle" not in c, "Knative refuses lifecycle hooks on the serving container"


def test_runtime_is_locked_down_like_the_base_deployment() -> None:
    base = yaml.safe_load((ROOT / "k8s" / "base" / "deployment.yaml").read_text())["spec"]["template"]["spec"]
    c = runtime_container()
    sc = c["securityContext"]
    for key, value in base["containers"][0]["securityContext"].items():
        assert sc.get(key) == value, f"securityContext.{key}: {sc.get(key)!r}, the base Deployment has {value!r}"
    for key in ("runAsNonRoot", "runAsUser", "runAsGroup", "seccompProfile"):  # pod-level in the base
        assert sc.get(key) == base["securityContext"][key], f"securityContext.{key} differs from the base"
    users = re.findall(r"^USER\s+(\S+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert users and str(sc["runAsUser"]) == users[-1].split(":")[0], "the runtime and the image run as different users"
    volumes = {v["name"]: v for v in runtime()["spec"].get("volumes", [])}
    writable = {m["mountPath"].rstrip("/"): m["name"] for m in c["volumeMounts"] if not m.get("readOnly")}
    for path, name in writable.items():
        assert "emptyDir" in volumes[name], f"{path} is writable but not an emptyDir"
    for var in ("MODELDOCK_CACHE_DIR", "TMPDIR"):
        assert env(c).get(var, "").rstrip("/") in writable, f"{var} is not on a writable emptyDir"
    assert env(c).get("PYTHONDONTWRITEBYTECODE") == "1"


def test_runtime_resources_and_image() -> None:
    c = runtime_container()
    for bound in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][bound]), f"{bound} need cpu and memory"
    name, _, tag = c["image"].rpartition(":")
    assert name and tag and tag != "latest" and "/" not in tag, f"pin the image tag, got {c['image']}"
    base = yaml.safe_load((ROOT / "k8s" / "base" / "kustomization.yaml").read_text())
    base_tag = next(i["newTag"] for i in base["images"] if i["name"] == "modeldock")
    assert tag == base_tag, f"the runtime runs {tag}, k8s/base runs {base_tag}: release them together"


# ---- the InferenceServices ----------------------------------------------------------------------
@pytest.mark.parametrize("item", services(), ids=doc_id)
def test_inference_service_uses_the_runtime(item: tuple[str, dict[str, Any]]) -> None:
    isvc, spec = item[1], runtime()["spec"]
    model = isvc["spec"]["predictor"]["model"]
    assert model.get("runtime") == runtime()["metadata"]["name"]
    assert kserve_supports(spec, model), f"runtime {model.get('runtime')} does not support {model['modelFormat']}"
    assert model.get("protocolVersion", "v1") in spec["protocolVersions"], "KServe's default protocol is v1"
    name = isvc["metadata"]["name"]
    assert ISVC_NAME.match(name), f"KServe refuses the name {name!r}"
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", name), f"{name!r} cannot be a model folder in a store"
    if "storageUri" in model:
        assert model["storageUri"].startswith(STORAGE_URI_PREFIXES), f"KServe cannot fetch {model['storageUri']}"


@pytest.mark.parametrize("item", services(), ids=doc_id)
def test_server_accepts_what_the_inference_service_gives_it(item: tuple[str, dict[str, Any]], tmp_path: Path) -> None:
    isvc, predictor = item[1], item[1]["spec"]["predictor"]
    model = predictor["model"]
    cfg, c = server_config(isvc, tmp_path), effective_container(isvc)
    served = ("0.0.0.0", c["ports"][0]["containerPort"])
    assert (cfg.host, int(cfg.port)) == served, f"the server listens on {cfg.host}:{cfg.port}, KServe sends to {served}"
    if "storageUri" in model:
        assert cfg.store == MODEL_MOUNT, "the store must be where the storage initializer copies storageUri"
    else:
        assert str(cfg.store).startswith("s3://"), f"without storageUri, serve from a bucket; got {cfg.store}"
        secret = yaml.safe_load((ROOT / "k8s" / "examples" / "s3-secret.yaml").read_text())
        refs = [e["secretRef"]["name"] for e in c.get("envFrom", []) if "secretRef" in e]
        assert secret["metadata"]["name"] in refs, "the bucket's credentials come from k8s/examples/s3-secret.yaml"
    if cfg.models is not None:  # the name KServe clients use must be a model the server serves
        assert isvc["metadata"]["name"] in [m.name for m in cfg.models]
    cpu = cpu_cores(c["resources"]["limits"]["cpu"])
    for m in [cfg.defaults, *(cfg.models or [])]:
        assert m.threads >= 1, "set threads: the default divides the node's cores, not the pod's limit"
        assert m.threads * m.workers + cfg.api_servers <= cpu, f"{m.name or 'defaults'} wants more than {cpu} CPUs"
    grace = predictor.get("terminationGracePeriodSeconds", DEFAULT_TERMINATION_GRACE_S)
    assert cfg.grace_period_s < grace, f"the drain ({cfg.grace_period_s}s) outlasts the pod's grace ({grace}s)"
    cache_dir = next(m for m in c["volumeMounts"] if m["mountPath"].rstrip("/") == env(c)["MODELDOCK_CACHE_DIR"])
    assert "emptyDir" in effective_volumes(isvc)[cache_dir["name"]], "the cache (and S3 mirror) is an emptyDir"
