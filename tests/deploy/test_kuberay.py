"""The KubeRay manifests of deploy/kuberay/: valid against the CRDs of the KubeRay release kept beside them
(deploy/kuberay/crds/), and right where it matters: GPUs where the encoder runs, credentials from Secrets
only, a config that loads, and the project's own command and application. Fast: no Ray, no cluster."""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib
import json
import re
import shlex
import tomllib
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from jsonschema.exceptions import ValidationError
from packaging.requirements import Requirement
from pydantic import ValidationError as ConfigValidationError
from ray.serve.schema import ServeDeploySchema

from embedding.cli import build_parser
from embedding.config import Config
from embedding.config_file import load_config
from embedding.errors import ConfigError
from embedding.redact import is_secret_key
from embedding.service import app as service_app
from embedding.service.app import serve_env

REPO = Path(__file__).resolve().parents[2]
KUBERAY = REPO / "deploy" / "kuberay"
CRDS = KUBERAY / "crds"
IMAGE = "ghcr.io/OWNER/embedding:VERSION"  # the placeholder every container names (README says which image)
GPU = "nvidia.com/gpu"
# The Secrets the manifests read, and the variables each gives every Ray container.
OBJECT_STORE = ("embedding-object-store", {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"})
# The service's API keys: a file of the Secret, mounted on every pod, never a variable.
KEYS_SECRET, KEYS_DIR, KEYS_FILE = "embedding-api-keys", "/etc/embedding/keys", "/etc/embedding/keys/api-keys"
# Environment variable names that carry a secret (EMBEDDING_API_KEYS, AWS_SECRET_ACCESS_KEY, ...).
SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSW|CREDENTIAL|AUTH", re.IGNORECASE)
# Literal credentials: AWS access key ids, PEM private keys.
SECRET_VALUE = re.compile(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b|-----BEGIN [A-Z ]*PRIVATE KEY-----")
# A RayJob's or RayService's name: a DNS-1123 label of at most 47 characters (KubeRay's MaxRayJobNameLength
# and MaxRayServiceNameLength: its cluster's name adds 6, and "-serve-svc" must still fit in 63).
DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,45}[a-z0-9])?$")
# The fast YAML loader where PyYAML has it: the CRDs are 2.4 MB of YAML.
LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


# ---- The CRDs' schemas, as the API server applies them ---------------------------------------------------
#
# A CRD's openAPIV3Schema is OpenAPI 3.0 with Kubernetes extensions, not plain JSON Schema. What the API
# server does with a manifest (kubectl apply, whose field validation is Strict by default since 1.27), and
# how it is rendered here for `jsonschema` (draft 4, the draft OpenAPI 3.0's schema objects derive from):
#
# - Unknown fields: a structural schema lists every field of an object and the API server refuses the ones
#   it does not list (Strict) or drops them silently (older kubectl, --validate=false). JSON Schema accepts
#   them unless told otherwise, which would let a typo (`rayClusterSpecc`) pass as valid and leave the job
#   without its cluster; so every object with `properties` and no `additionalProperties` is closed
#   (`additionalProperties: false`), except under `x-kubernetes-preserve-unknown-fields: true` (open by
#   design; none in these CRDs). Objects with neither (the root's `metadata`, checked by the API server's
#   own ObjectMeta rules) stay open; the tests check the names.
# - `x-kubernetes-int-or-string: true` (resource quantities, ports of probes): the CRDs spell it with
#   `anyOf: [{type: integer}, {type: string}]`, which JSON Schema evaluates as it is; a node that has the
#   extension without the anyOf gets it. `pattern` (a quantity's) applies to strings only, as in Kubernetes.
# - Formats: `int32` and `int64` are range checks; `int-or-string` (the built-in OpenAPI's spelling of the
#   same thing) is checked too; other formats (`date-time`: in `status` only) are not checked.
# - `nullable: true` admits null beside the type.
# - `x-kubernetes-list-type`: `map` lists (containers, env, ports, volumes, ...) may not hold two items with
#   the same keys (`x-kubernetes-list-map-keys`, defaults applied as the API server does), `set` lists no
#   two equal items; `atomic` is about how server-side apply merges, nothing to validate.
# - `x-kubernetes-map-type`, `x-kubernetes-embedded-resource`: merge strategy and an embedded object's own
#   apiVersion/kind/metadata; no embedded resources in these CRDs.
# - `x-kubernetes-validations`: CEL rules, which need a CEL engine. A manifest that sets a field carrying
#   such rules (spec.deletionStrategy, spec.managedBy, ...) fails here with a message that says so: check
#   it with `kubectl apply --dry-run=server` against a cluster with the CRDs and teach this test its rule.


@functools.cache
def crds() -> dict[tuple[str, str], dict[str, Any]]:
    """(group, kind) -> the CRD, for every file of deploy/kuberay/crds/."""
    found = {}
    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.load(path.read_text(), Loader=LOADER)
        assert crd["kind"] == "CustomResourceDefinition", path
        found[crd["spec"]["group"], crd["spec"]["names"]["kind"]] = crd
    return found


def crd_schema(api_version: str, kind: str) -> dict[str, Any]:
    """The openAPIV3Schema that the CRD of `kind` gives its served version of `api_version`."""
    group, _, version = api_version.partition("/")
    crd = crds().get((group, kind))
    assert crd is not None, f"no CRD for {kind} of {group} in {CRDS}"
    for entry in crd["spec"]["versions"]:
        if entry["name"] == version and entry["served"]:
            schema: dict[str, Any] = entry["schema"]["openAPIV3Schema"]
            return schema
    raise AssertionError(f"the {kind} CRD serves no version {version}")


def as_json_schema(node: dict[str, Any]) -> dict[str, Any]:
    """A Kubernetes structural schema as JSON Schema that refuses what the API server refuses (above)."""
    out = dict(node)
    if "properties" in out:
        out["properties"] = {name: as_json_schema(sub) for name, sub in out["properties"].items()}
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = as_json_schema(out["additionalProperties"])
    if isinstance(out.get("items"), dict):
        out["items"] = as_json_schema(out["items"])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in out:
            out[key] = [as_json_schema(sub) for sub in out[key]]
    if "not" in out:
        out["not"] = as_json_schema(out["not"])
    open_by_design = out.get("x-kubernetes-preserve-unknown-fields") is True
    if "properties" in out and "additionalProperties" not in out and not open_by_design:
        out["additionalProperties"] = False
    if out.get("x-kubernetes-int-or-string") is True and "anyOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.get("nullable") is True and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


def _list_type(
    validator: Any, list_type: str, instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "array") or list_type not in ("map", "set"):
        return
    if list_type == "set":
        keys = [json.dumps(item, sort_keys=True) for item in instance]
    else:
        names = schema.get("x-kubernetes-list-map-keys", [])
        fields = schema.get("items", {}).get("properties", {})
        keys = [
            json.dumps([item.get(n, fields.get(n, {}).get("default")) for n in names])
            for item in instance
            if isinstance(item, dict)
        ]
    repeated = sorted(key for key, count in Counter(keys).items() if count > 1)
    if repeated:
        yield ValidationError(f"duplicate entries in a list of type {list_type}: {', '.join(repeated)}")


def _cel(
    validator: Any, rules: list[dict[str, Any]], instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    yield ValidationError(
        "carries CEL rules (x-kubernetes-validations) that this test cannot evaluate: "
        + "; ".join(rule.get("rule", "?") for rule in rules)
    )


def _int_range(bits: int) -> Callable[[object], bool]:
    return lambda v: not isinstance(v, int) or -(2 ** (bits - 1)) <= v < 2 ** (bits - 1)


FORMATS = jsonschema.FormatChecker(formats=())
FORMATS.checks("int32")(_int_range(32))
FORMATS.checks("int64")(_int_range(64))
FORMATS.checks("int-or-string")(lambda v: isinstance(v, int | str) and not isinstance(v, bool))

KubeValidator = jsonschema.validators.extend(
    jsonschema.Draft4Validator, {"x-kubernetes-list-type": _list_type, "x-kubernetes-validations": _cel}
)


@functools.cache
def _validator(api_version: str, kind: str) -> Any:
    schema = as_json_schema(crd_schema(api_version, kind))
    KubeValidator.check_schema(schema)  # what the conversion made is a valid draft-4 schema
    return KubeValidator(schema, format_checker=FORMATS)


def problems(manifest: dict[str, Any]) -> list[str]:
    """What the CRD of the manifest's apiVersion and kind refuses in it: `path: message`, one a line."""
    validator = _validator(manifest["apiVersion"], manifest["kind"])
    return sorted(
        f"{'.'.join(str(p) for p in error.absolute_path) or '(root)'}: {error.message}"
        for error in validator.iter_errors(manifest)
    )


# ---- The manifests -----------------------------------------------------------------------------------------


def documents(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((KUBERAY / name).read_text()) if doc]


def one(name: str, kind: str) -> dict[str, Any]:
    (doc,) = documents(name)
    assert doc["kind"] == kind, f"{name} holds a {doc['kind']}, not a {kind}"
    return doc


def cluster_of(manifest: dict[str, Any]) -> dict[str, Any]:
    spec = manifest["spec"]
    cluster: dict[str, Any] = (
        spec["rayClusterSpec"] if manifest["kind"] == "RayJob" else spec["rayClusterConfig"]
    )
    return cluster


def groups(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """'head' and each worker group by its name."""
    cluster = cluster_of(manifest)
    return {"head": cluster["headGroupSpec"], **{g["groupName"]: g for g in cluster["workerGroupSpecs"]}}


def ray_container(group: dict[str, Any]) -> dict[str, Any]:
    (container,) = group["template"]["spec"]["containers"]  # KubeRay runs Ray in the first container
    return container


def containers(node: Any) -> Iterator[dict[str, Any]]:
    """Every container of every pod template anywhere in a manifest (init containers and submitters too)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                yield from value
            else:
                yield from containers(value)
    elif isinstance(node, list):
        for item in node:
            yield from containers(item)


def quantity(resources: dict[str, Any], name: str) -> float:
    value = str(resources.get(name, "0"))
    return float(value[:-1]) / 1000 if value.endswith("m") else float(value)


def gpus(group: dict[str, Any]) -> int:
    resources = ray_container(group).get("resources", {})
    limit = int(quantity(resources.get("limits", {}), GPU))
    # An extended resource's request, where given, must equal its limit (the API server refuses others).
    assert str(resources.get("requests", {}).get(GPU, limit)) == str(limit), resources
    return limit


def job_config_map() -> dict[str, Any]:
    return one("config.yaml", "ConfigMap")


def job_config(tmp_path: Path, text: str | None = None) -> Config:
    path = tmp_path / "job.yaml"
    path.write_text(job_config_map()["data"]["job.yaml"] if text is None else text)
    return load_config(path)


def serve_config() -> ServeDeploySchema:
    service = one("rayservice.yaml", "RayService")
    return ServeDeploySchema.model_validate(yaml.safe_load(service["spec"]["serveConfigV2"]))


# ---- The CRDs are the release they name -----------------------------------------------------------------


def test_the_crds_are_the_recorded_release_verbatim() -> None:
    record = (CRDS / "README.md").read_text()
    assert re.search(r"KubeRay v\d+\.\d+\.\d+\*\* \(tag `v\d+\.\d+\.\d+`, commit `[0-9a-f]{40}`\)", record)
    assert "Apache License 2.0" in record
    sums = dict(re.findall(r"^\| `([\w.]+\.yaml)` \| `([0-9a-f]{64})` \|$", record, re.MULTILINE))
    kept = sorted(p.name for p in CRDS.glob("*.yaml"))
    assert sorted(sums) == kept == ["ray.io_rayjobs.yaml", "ray.io_rayservices.yaml"]
    for name, digest in sums.items():
        assert hashlib.sha256((CRDS / name).read_bytes()).hexdigest() == digest, f"{name} was changed"
    for kind in ("RayJob", "RayService"):
        (v1,) = [v for v in crds()["ray.io", kind]["spec"]["versions"] if v["name"] == "v1"]
        assert v1["served"] and v1["storage"]


# ---- Valid against the CRDs, and the validation is not vacuous -------------------------------------------


@pytest.mark.parametrize(("name", "kind"), [("rayjob.yaml", "RayJob"), ("rayservice.yaml", "RayService")])
def test_the_manifest_is_valid_against_its_crd(name: str, kind: str) -> None:
    manifest = one(name, kind)
    assert manifest["apiVersion"] == "ray.io/v1"
    assert problems(manifest) == []
    assert DNS_LABEL.match(manifest["metadata"]["name"]), manifest["metadata"]["name"]
    assert "namespace" not in manifest["metadata"]  # kubectl -n chooses it


def _rename(node: dict[str, Any], old: str, new: str) -> None:
    node[new] = node.pop(old)


def _head(m: dict[str, Any]) -> dict[str, Any]:
    return groups(m)["head"]


MUTATIONS: list[tuple[str, str, Callable[[dict[str, Any]], None], str]] = [
    # (manifest, what is wrong, the change, what the error says)
    (
        "rayjob.yaml",
        "a typo'd field",
        lambda m: _rename(m["spec"], "rayClusterSpec", "rayClusterSpecc"),
        "'rayClusterSpecc' was unexpected",
    ),
    (
        "rayjob.yaml",
        "a typo'd field deep in a pod",
        lambda m: _rename(ray_container(_head(m)), "image", "imagee"),
        "'imagee' was unexpected",
    ),
    (
        "rayjob.yaml",
        "a number where Ray's start parameters take strings",
        lambda m: _head(m)["rayStartParams"].update({"num-cpus": 0}),
        "0 is not of type 'string'",
    ),
    (
        "rayjob.yaml",
        "a boolean as text",
        lambda m: m["spec"].update(shutdownAfterJobFinishes="yes"),
        "'yes' is not of type 'boolean'",
    ),
    (
        "rayjob.yaml",
        "a worker group without its name",
        lambda m: groups(m)["gpu"].pop("groupName"),
        "'groupName' is a required property",
    ),
    (
        "rayjob.yaml",
        "a GPU count that is no quantity",
        lambda m: ray_container(groups(m)["gpu"])["resources"]["limits"].update({GPU: "one"}),
        "does not match",
    ),
    (
        "rayjob.yaml",
        "an environment variable twice",
        lambda m: ray_container(_head(m))["env"].append(copy.deepcopy(ray_container(_head(m))["env"][0])),
        "duplicate entries in a list of type map",
    ),
    ("rayjob.yaml", "a field with CEL rules", lambda m: m["spec"].update(deletionStrategy={}), "CEL rules"),
    (
        "rayservice.yaml",
        "the Serve config as YAML rather than text",
        lambda m: m["spec"].update(serveConfigV2=yaml.safe_load(m["spec"]["serveConfigV2"])),
        "is not of type 'string'",
    ),
    (
        "rayservice.yaml",
        "a port beyond int32",
        lambda m: ray_container(_head(m))["ports"][0].update(containerPort=2**40),
        "is not a 'int32'",
    ),
    (
        "rayservice.yaml",
        "a RayJob's field in a RayService",
        lambda m: _rename(m["spec"], "rayClusterConfig", "rayClusterSpec"),
        "'rayClusterConfig' is a required property",
    ),
]


def test_without_closed_objects_a_typo_would_pass() -> None:
    """Why as_json_schema closes objects: the CRD's schema as plain JSON Schema takes a typo'd field."""
    manifest = one("rayjob.yaml", "RayJob")
    _rename(manifest["spec"], "rayClusterSpec", "rayClusterSpecc")
    assert list(jsonschema.Draft4Validator(crd_schema("ray.io/v1", "RayJob")).iter_errors(manifest)) == []
    assert problems(manifest) != []


@pytest.mark.parametrize(("name", "wrong", "change", "says"), MUTATIONS, ids=[m[1] for m in MUTATIONS])
def test_validation_refuses_a_broken_manifest(
    name: str, wrong: str, change: Callable[[dict[str, Any]], None], says: str
) -> None:
    manifest = one(name, {"rayjob.yaml": "RayJob", "rayservice.yaml": "RayService"}[name])
    change(manifest)
    found = problems(manifest)
    assert any(says in line for line in found), f"{wrong}: {found}"


# ---- What matters ----------------------------------------------------------------------------------------


def test_the_job_runs_the_projects_command_on_the_mounted_config() -> None:
    job = one("rayjob.yaml", "RayJob")
    argv = shlex.split(job["spec"]["entrypoint"])
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert argv[0] in scripts, f"{argv[0]} is no console script of the package"
    assert scripts[argv[0]] == "embedding.cli:main"  # whose parser takes the rest
    args = build_parser().parse_args(argv[1:])
    assert args.command == "run"
    # The config it names is the ConfigMap's, mounted on the head (where the driver runs).
    config_path = Path(args.config)
    head = _head(job)
    (mount,) = [m for m in ray_container(head)["volumeMounts"] if m["mountPath"] == str(config_path.parent)]
    (volume,) = [v for v in head["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    config_map = job_config_map()
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    (item,) = volume["configMap"]["items"]
    assert item["path"] == config_path.name and item["key"] in config_map["data"]
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    assert "runtimeEnvYAML" not in job["spec"]  # the package is in the image; nothing goes to Ray's records


def test_the_config_map_holds_a_config_that_loads(tmp_path: Path) -> None:
    cfg = job_config(tmp_path)
    assert cfg.ray.address == "auto"  # the RayJob's cluster
    # The pods and their disks are gone with the cluster: inputs and outputs live on an object store.
    for uri in [*cfg.input.manifest, cfg.output.root]:
        assert uri.split("://")[0] in ("s3", "gs", "gcs"), uri
    assert cfg.inference.device == "cuda"
    text = job_config_map()["data"]["job.yaml"]
    with pytest.raises(ConfigError, match=r"unknown key 'inference\.num_gpu_per_actor'"):
        job_config(tmp_path, text.replace("num_gpus_per_actor:", "num_gpu_per_actor:"))
    with pytest.raises(ConfigError, match=r"unknown key 'bogus'"):
        job_config(tmp_path, text + "bogus: 1\n")


def test_the_gpu_group_requests_gpus_for_the_encoder(tmp_path: Path) -> None:
    cfg = job_config(tmp_path)
    job = groups(one("rayjob.yaml", "RayJob"))
    assert gpus(job["head"]) == 0 and gpus(job["cpu"]) == 0  # decode and the driver take no GPU
    gpu = job["gpu"]
    per_pod = gpus(gpu)
    assert per_pod >= 1
    tolerations = gpu["template"]["spec"].get("tolerations", [])
    assert any(t["key"] == GPU for t in tolerations)  # GPU nodes are usually tainted so
    # The encoder pool fits the GPUs: its first actors on the pods that start, all of them at most.
    need = cfg.inference.num_gpus_per_actor or 1
    assert cfg.inference.min_actors * need <= gpu["replicas"] * per_pod
    assert cfg.inference.max_actors * need <= gpu["maxReplicas"] * per_pod
    assert cfg.inference.num_cpus_per_actor <= quantity(ray_container(gpu)["resources"]["limits"], "cpu")
    assert quantity(ray_container(job["cpu"])["resources"]["limits"], "cpu") >= cfg.preprocess.num_cpus

    service = one("rayservice.yaml", "RayService")
    svc = Config.model_validate(serve_config().applications[0].args).service.encoder
    serving = groups(service)
    assert gpus(serving["head"]) == 0 and gpus(serving["cpu"]) == 0
    per_pod = gpus(serving["gpu"])
    assert svc.num_gpus and per_pod >= svc.num_gpus
    assert any(t["key"] == GPU for t in serving["gpu"]["template"]["spec"].get("tolerations", []))
    assert svc.min_replicas * svc.num_gpus <= serving["gpu"]["minReplicas"] * per_pod
    assert (svc.max_replicas or svc.min_replicas) * svc.num_gpus <= serving["gpu"]["maxReplicas"] * per_pod
    assert svc.num_cpus <= quantity(ray_container(serving["gpu"])["resources"]["limits"], "cpu")
    # Serve autoscales the encoder: the cluster must be able to add the GPU pods it asks for.
    if (svc.max_replicas or 0) > svc.min_replicas:
        assert cluster_of(service)["enableInTreeAutoscaling"] is True


def _secret_looking_values(tree: Any, path: str = "") -> Iterator[str]:
    """Config keys named like secrets that hold a value, anywhere in a config tree."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            here = f"{path}.{key}" if path else str(key)
            named = is_secret_key(key) or SECRET_NAME.search(str(key))
            # A `..._file` key names where a secret is (service.api_keys_file: a mounted Secret), not it.
            if named and not str(key).endswith("_file") and value not in (None, "", [], {}):
                yield here
            yield from _secret_looking_values(value, here)
    elif isinstance(tree, list):
        for item in tree:
            yield from _secret_looking_values(item, path)


def test_credentials_come_only_from_secrets(tmp_path: Path) -> None:
    files = sorted(KUBERAY.glob("*.yaml"))
    assert [f.name for f in files] == ["config.yaml", "rayjob.yaml", "rayservice.yaml"]
    for path in files:
        text = path.read_text()
        assert not SECRET_VALUE.search(text), f"{path.name} holds a literal credential"
        for doc in documents(path.name):
            assert doc["kind"] != "Secret", f"{path.name}: Secrets are made by kubectl, never kept here"
            for container in containers(doc):
                assert "envFrom" not in container  # every variable by name, so that each is checked
                for var in container.get("env", []):
                    if SECRET_NAME.search(var["name"]):
                        assert "value" not in var, f"{path.name}: {var['name']} is a literal"
                        assert set(var["valueFrom"]) == {"secretKeyRef"}, var
    # Every Ray container gets the object store's credentials (the driver and the workers both read and
    # write it).
    for name, kind, wanted in [
        ("rayjob.yaml", "RayJob", [OBJECT_STORE]),
        ("rayservice.yaml", "RayService", [OBJECT_STORE]),
    ]:
        for group_name, group in groups(one(name, kind)).items():
            refs = {
                var["name"]: var["valueFrom"]["secretKeyRef"]
                for var in ray_container(group).get("env", [])
                if "valueFrom" in var
            }
            for secret, variables in wanted:
                for variable in variables:
                    assert refs.get(variable) == {"name": secret, "key": variable}, (
                        name,
                        group_name,
                        variable,
                    )
    # No secret in the configs: not in the ConfigMap, not in serveConfigV2 (KubeRay logs it; Ray records a
    # runtime_env), not as service.api_keys.
    job_tree = yaml.safe_load(job_config_map()["data"]["job.yaml"])
    assert list(_secret_looking_values(job_tree)) == []
    served = yaml.safe_load(one("rayservice.yaml", "RayService")["spec"]["serveConfigV2"])
    assert list(_secret_looking_values(served)) == []
    assert job_config(tmp_path).service.api_keys == []
    served_cfg = Config.model_validate(serve_config().applications[0].args)
    assert served_cfg.service.api_keys == []
    # The service's keys: a file of their Secret, mounted read-only on every pod (Ray may run the builder,
    # which reads it, on any node), named by service.api_keys_file; never a variable, which every Ray process
    # of the pod would inherit.
    assert served_cfg.service.api_keys_file == KEYS_FILE
    for group_name, group in groups(one("rayservice.yaml", "RayService")).items():
        pod = group["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["name"]: m for m in ray_container(group)["volumeMounts"]}
        assert volumes["api-keys"]["secret"]["secretName"] == KEYS_SECRET, group_name
        assert mounts["api-keys"] == {"name": "api-keys", "mountPath": KEYS_DIR, "readOnly": True}, group_name
        assert not {v["name"] for v in ray_container(group).get("env", [])} & {"EMBEDDING_API_KEYS"}


def test_the_service_runs_the_projects_application(tmp_path: Path) -> None:
    schema = serve_config()
    (application,) = schema.applications
    module, _, attribute = application.import_path.partition(":")
    assert getattr(importlib.import_module(module), attribute) is service_app.build
    assert application.route_prefix == "/"
    cfg = Config.model_validate(application.args)  # the builder's own validation: unknown keys refused
    with pytest.raises(ConfigValidationError, match="bogus"):
        Config.model_validate({**application.args, "bogus": 1})
    # It serves what the job writes: the same output root and model version.
    job = job_config(tmp_path)
    assert (cfg.output.root, cfg.model.version) == (job.output.root, job.model.version)
    assert cfg.service.versions == [job.model.version]
    # HTTP on every pod's `serve` port, which KubeRay's Service for Serve targets.
    assert schema.http_options.host == "0.0.0.0"
    service = one("rayservice.yaml", "RayService")
    for name, group in groups(service).items():
        ports = {p["name"]: p["containerPort"] for p in ray_container(group).get("ports", [])}
        assert ports.get("serve") == schema.http_options.port, name
    # The environment that `embedding serve` gives Serve (but the drain period: clusters keep Ray's), alike
    # for the controller, the application and every pod.
    wanted = serve_env(cfg, haproxy=True)
    del wanted["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"]
    assert schema.controller_options.runtime_env["env_vars"] == wanted
    assert application.runtime_env["env_vars"] == wanted
    for name, group in groups(service).items():
        plain = {v["name"]: v["value"] for v in ray_container(group).get("env", []) if "value" in v}
        assert plain == wanted, name


def test_one_image_and_the_ray_of_the_project() -> None:
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (ray,) = [Requirement(d) for d in dependencies if Requirement(d).name == "ray"]
    for name, kind in [("rayjob.yaml", "RayJob"), ("rayservice.yaml", "RayService")]:
        manifest = one(name, kind)
        assert {c["image"] for c in containers(manifest)} == {IMAGE}, name
        assert ray.specifier.contains(cluster_of(manifest)["rayVersion"]), name
