"""deploy/k8s renders, passes the Kubernetes and KEDA schemas offline, and does what docs/deployment.md says.

Each variant (deploy/k8s itself and every overlay) is rendered with ``kubectl kustomize`` on the local folder:
no cluster and no network. Every object is validated with kubernetes-validate against the Kubernetes
``KUBERNETES_VERSION`` schemas (strict: an unknown field fails), except KEDA's kinds, which are validated with
jsonschema against the openAPIV3Schema of the CRDs kept in deploy/k8s/crds/, made strict the same way. The other
tests read the rendered objects: hardening, resources, probes, secrets, scaling, network policies, budgets.
"""

import functools
import itertools
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[3]
K8S = ROOT / "deploy" / "k8s"
CRDS = K8S / "crds"
DOCS = ROOT / "docs" / "deployment.md"
# The cluster version the manifests are written for; kubernetes-validate ships its schemas.
KUBERNETES_VERSION = "1.32"
NAMESPACE = "iris"
# Every variant this file renders; test_every_overlay_is_rendered_here fails when an overlay is added without it.
VARIANTS = {"in-cluster": K8S, "external-services": K8S / "overlays" / "external-services"}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
SECRET_WORDS = ("PASSWORD", "KEY", "SECRET", "TOKEN")
# A URL whose user part holds a password: scheme://user:password@host.
URL_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^/@\s]*:([^/@\s]*)@", re.I)
REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
# The docker-library redis:7-alpine image's user; the other images' users are read from their Dockerfiles.
REDIS_UID = 999
LIST_LENGTH_COMMENT = "# measured throughput and QUEUE_MAX_LENGTH: docs/deployment.md#scaling-workers-on-the-queue"

Obj = dict[str, Any]


# --- rendering -----------------------------------------------------------------------------------------------


def ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def kubectl() -> str:
    """Return kubectl's path; skip without it, but fail under CI, where the manifests must be checked."""
    path = shutil.which("kubectl")
    if path is None:
        reason = "kubectl is not installed, so deploy/k8s cannot be rendered (Debian: apt-get install kubectl)"
        if ci():
            pytest.fail(f"{reason}; CI must check the Kubernetes manifests", pytrace=False)
        pytest.skip(reason)
    return path


@functools.cache
def render(folder: Path) -> tuple[Obj, ...]:
    """Return the objects ``kubectl kustomize`` renders from a local folder (kubectl reads no cluster for it)."""
    done = subprocess.run([kubectl(), "kustomize", str(folder)], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, f"kubectl kustomize {folder.relative_to(ROOT)} failed:\n{done.stderr}"
    return tuple(obj for obj in yaml.safe_load_all(done.stdout) if obj)


@pytest.fixture(params=sorted(VARIANTS), ids=str)
def objects(request: pytest.FixtureRequest) -> tuple[Obj, ...]:
    return render(VARIANTS[request.param])


def named(objs: tuple[Obj, ...], kind: str, name: str) -> Obj | None:
    return next((o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name), None)


def one(objs: tuple[Obj, ...], kind: str, name: str) -> Obj:
    found = named(objs, kind, name)
    assert found is not None, f"no {kind} {name} in the rendering"
    return found


def pod_spec(workload: Obj) -> Obj:
    spec: Obj = workload["spec"]["template"]["spec"]
    return spec


def containers(spec: Obj) -> Iterator[tuple[Obj, bool]]:
    """Yield each container of a pod spec with whether it runs for the pod's life (init containers do not)."""
    for container in spec.get("initContainers", []):
        yield container, container.get("restartPolicy") == "Always"  # a native sidecar runs for the pod's life
    for container in spec["containers"]:
        yield container, True


def every_container(objs: tuple[Obj, ...]) -> Iterator[tuple[str, Obj, Obj, bool]]:
    """Yield ``(where, pod spec, container, long-running)`` for every container of every workload."""
    for obj in objs:
        if obj["kind"] in WORKLOADS:
            spec = pod_spec(obj)
            for container, lasting in containers(spec):
                lasting = lasting and obj["kind"] != "Job"
                yield f"{obj['kind']}/{obj['metadata']['name']}/{container['name']}", spec, container, lasting


def env_value(container: Obj, name: str) -> str | None:
    return next((e.get("value") for e in container.get("env", []) if e["name"] == name), None)


def config(objs: tuple[Obj, ...]) -> dict[str, str]:
    """Return the data of the generated ConfigMap iris-config (kustomize adds a hash to its name)."""
    (found,) = [o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("iris-config-")]
    data: dict[str, str] = found["data"]
    return data


# --- schemas -------------------------------------------------------------------------------------------------


def strict(schema: Obj) -> Obj:
    """Return a CRD schema that refuses unknown fields, as the API server's strict field validation does."""
    out = dict(schema)
    if "properties" in schema:
        out["properties"] = {name: strict(sub) for name, sub in schema["properties"].items()}
        if not schema.get("x-kubernetes-preserve-unknown-fields"):
            out.setdefault("additionalProperties", False)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            out[key] = strict(schema[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in schema:
            out[key] = [strict(sub) for sub in schema[key]]
    return out


@functools.cache
def crd_schemas() -> dict[tuple[str, str], Obj]:
    """Return the strict openAPIV3Schema of each (apiVersion, kind) the CRDs in deploy/k8s/crds/ define."""
    found: dict[tuple[str, str], Obj] = {}
    for path in sorted(CRDS.glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd:
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                found[(f"{group}/{version['name']}", kind)] = strict(version["schema"]["openAPIV3Schema"])
    return found


def schema_errors(obj: Obj) -> list[str]:
    where = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
    if obj["apiVersion"].split("/")[0].endswith("keda.sh"):
        schema = crd_schemas().get((obj["apiVersion"], obj["kind"]))
        if schema is None:
            return [f"{where}: no CRD in deploy/k8s/crds/ defines {obj['apiVersion']} {obj['kind']}"]
        errors = jsonschema.Draft7Validator(schema).iter_errors(obj)
        return [f"{where}: {'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{where}: {'/'.join(map(str, exc.path))}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [f"{where}: {exc}"]
    return []


def test_every_overlay_is_rendered_here() -> None:
    overlays = {path.parent for path in (K8S / "overlays").glob("*/kustomization.yaml")}

    assert overlays == {path for path in VARIANTS.values() if path != K8S}
    assert (K8S / "kustomization.yaml").is_file()


def test_every_object_passes_the_kubernetes_schemas_or_its_keda_crd(objects: tuple[Obj, ...]) -> None:
    assert objects
    assert [error for obj in objects for error in schema_errors(obj)] == []


def test_the_schema_check_refuses_an_unknown_field_and_a_wrong_type() -> None:
    # Strictness is the point: a misspelt field would otherwise be pruned by the API server without a word.
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
                  "spec": {"selector": {}, "template": {"spec": {"containers": [{"name": "x", "imagePullPolicy": 1}]}},
                           "replicaz": 2}}
    scaled = {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": "x"},
              "spec": {"scaleTargetRef": {"name": "x"}, "minReplicas": 1, "triggers": [{"type": "redis"}]}}

    assert schema_errors(deployment)
    assert [error for error in schema_errors(scaled) if "minReplicas" in error]


def test_the_crds_kept_for_validation_name_their_source_and_licence_and_are_not_deployed() -> None:
    for path in CRDS.glob("*.yaml"):
        header = path.read_text().split("\n---", 1)[0]
        assert "github.com/kedacore/keda" in header and "Apache License 2.0" in header, path.name
        assert re.search(r"tag v2\.\d+\.\d+", header), path.name
    assert {kind for _, kind in crd_schemas()} >= {"ScaledObject", "TriggerAuthentication"}
    # The operator installs KEDA (its Helm chart brings the CRDs): the rendering must not carry them.
    assert [o for o in render(K8S) if o["kind"] == "CustomResourceDefinition"] == []


# --- namespace, labels, images -------------------------------------------------------------------------------


def test_every_object_is_in_the_namespace_with_the_common_labels(objects: tuple[Obj, ...]) -> None:
    assert {o["metadata"].get("namespace") for o in objects} == {NAMESPACE}
    for obj in objects:
        labels = obj["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/part-of") == "iris-queue-serving", obj["metadata"]["name"]
    for obj in objects:
        if obj["kind"] in WORKLOADS:
            assert "app.kubernetes.io/part-of" in obj["spec"]["template"]["metadata"]["labels"]


def test_images_come_from_the_kustomize_images_and_tag_matches_the_version_reported(objects: tuple[Obj, ...]) -> None:
    images = {container["image"] for _, _, container, _ in every_container(objects)}
    # A bare name means kustomize's images: missed it, and the kubelet would pull docker.io/library/iris-api.
    assert all(":" in image and ("/" in image or image.startswith("redis:")) for image in images), images
    api = one(objects, "Deployment", "api")
    api_image = pod_spec(api)["containers"][0]["image"]
    assert api_image.rsplit("/", 1)[-1].startswith("iris-api:")
    # /version reports TAG: it must be the images' tag.
    assert config(objects)["TAG"] == api_image.rsplit(":", 1)[1]
    tags = {image.rsplit(":", 1)[1] for image in images if "/iris-" in image}
    assert tags == {config(objects)["TAG"]}


# --- containers: resources, hardening, probes, volumes -------------------------------------------------------


def quantity(value: str | int) -> float:
    """Return a CPU or memory quantity as a number (cores or bytes)."""
    text = str(value)
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9}
    for suffix, factor in sorted(units.items(), key=lambda item: -len(item[0])):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def test_every_container_requests_and_limits_cpu_and_memory(objects: tuple[Obj, ...]) -> None:
    for where, _, container, _ in every_container(objects):
        resources = container.get("resources", {})
        for kind in ("requests", "limits"):
            assert set(resources.get(kind, {})) >= {"cpu", "memory"}, f"{where}: no {kind}"
        for resource in ("cpu", "memory"):
            assert quantity(resources["requests"][resource]) <= quantity(resources["limits"][resource]), where


def test_every_resources_block_says_which_measured_figure_it_comes_from() -> None:
    blocks = 0
    for path in sorted((K8S / "base").glob("*.yaml")):
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines):
            # A container's resources block (a claim's asks for storage; kustomize's lists files).
            if line.strip() == "resources:" and "cpu:" in "".join(lines[number + 1: number + 3]):
                above = "\n".join(lines[max(0, number - 4): number])
                assert re.search(r"#.*[Mm]easured", above), f"{path.name}:{number + 1}"
                blocks += 1
    assert blocks == sum(1 for _, _, _, _ in every_container(render(K8S)))


def dockerfile_uid(name: str) -> int:
    match = re.search(r"^USER (\d+)", (ROOT / name).read_text(), re.M)
    assert match, name
    return int(match.group(1))


def expected_uid(image: str) -> int:
    if "/iris-api:" in image:
        return dockerfile_uid("Dockerfile.api")
    if "/iris-" in image:
        return dockerfile_uid("Dockerfile.worker")
    assert image.startswith("redis:"), image
    return REDIS_UID


def test_every_container_runs_as_its_images_non_root_user_read_only_and_without_privileges(
        objects: tuple[Obj, ...]) -> None:
    for where, spec, container, _ in every_container(objects):
        pod = spec.get("securityContext", {})
        own = container.get("securityContext", {})

        def effective(key: str, own: Obj = own, pod: Obj = pod) -> Any:
            return own.get(key, pod.get(key))

        assert effective("runAsNonRoot") is True, where
        assert effective("runAsUser") == expected_uid(container["image"]), where
        assert own.get("readOnlyRootFilesystem") is True, where
        assert own.get("allowPrivilegeEscalation") is False, where
        assert own.get("capabilities", {}).get("drop") == ["ALL"], where
        assert own.get("capabilities", {}).get("add") is None, where
        assert (effective("seccompProfile") or {}).get("type") == "RuntimeDefault", where
        assert own.get("privileged") is not True, where
    for obj in objects:
        if obj["kind"] in WORKLOADS:
            assert pod_spec(obj).get("hostNetwork") is not True
            assert pod_spec(obj).get("automountServiceAccountToken") is False, obj["metadata"]["name"]


def test_every_long_running_container_has_a_liveness_probe(objects: tuple[Obj, ...]) -> None:
    lasting = [(where, container) for where, _, container, runs in every_container(objects) if runs]

    assert lasting
    assert [where for where, container in lasting if "livenessProbe" not in container] == []


def port_of(container: Obj, port: int | str) -> int:
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == port]
    return int(number)


def test_the_api_listens_on_port_and_its_probes_hit_livez_and_readyz(objects: tuple[Obj, ...]) -> None:
    (container,) = pod_spec(one(objects, "Deployment", "api"))["containers"]
    port = int(env_value(container, "PORT") or Settings.model_fields["port"].default)
    live, ready = container["livenessProbe"]["httpGet"], container["readinessProbe"]["httpGet"]

    assert (live["path"], ready["path"]) == ("/livez", "/readyz")
    assert port_of(container, live["port"]) == port_of(container, ready["port"]) == port
    assert env_value(container, "API_HOST") in (None, "0.0.0.0")
    service = one(objects, "Service", "api")
    assert [port_of(container, p["targetPort"]) for p in service["spec"]["ports"]] == [port]


def compose() -> Obj:
    data: Obj = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def test_the_worker_probes_its_heartbeat_file_as_compose_does_in_a_writable_volume(objects: tuple[Obj, ...]) -> None:
    spec = pod_spec(one(objects, "Deployment", "worker"))
    (worker,) = spec["containers"]
    heartbeat = env_value(worker, "WORKER_HEARTBEAT_FILE")
    compose_check = compose()["services"]["worker"]["healthcheck"]["test"]

    assert heartbeat
    assert worker["livenessProbe"]["exec"]["command"] == compose_check[1:]  # without compose's "CMD"
    assert worker["startupProbe"]["exec"]["command"] == compose_check[1:]
    mounts = {m["mountPath"]: m for m in worker["volumeMounts"]}
    assert str(Path(heartbeat).parent) in mounts and not mounts[str(Path(heartbeat).parent)].get("readOnly")


def test_redis_and_mlflow_probe_as_compose_does() -> None:
    objs = render(K8S)
    (redis,) = pod_spec(one(objs, "StatefulSet", "redis"))["containers"]
    (mlflow,) = pod_spec(one(objs, "Deployment", "mlflow"))["containers"]

    assert "redis-cli --user iris --no-auth-warning ping" in " ".join(redis["livenessProbe"]["exec"]["command"])
    # redis-cli reads the password from REDISCLI_AUTH, the Secret's: never on a command line.
    assert redis_auth_from_secret(redis)
    assert mlflow["livenessProbe"]["httpGet"]["path"] == "/health"


def redis_auth_from_secret(container: Obj) -> bool:
    entry = next(e for e in container["env"] if e["name"] == "REDISCLI_AUTH")
    return "secretKeyRef" in entry.get("valueFrom", {})


def writable_paths(container: Obj) -> list[str]:
    """Return the paths a container's processes write to, from its environment and arguments."""
    paths = ["/tmp"]
    for name in ("HOME", "PROMETHEUS_MULTIPROC_DIR", "MPLCONFIGDIR"):
        if (value := env_value(container, name)) is not None:
            paths.append(value)
    if (heartbeat := env_value(container, "WORKER_HEARTBEAT_FILE")) is not None:
        paths.append(str(Path(heartbeat).parent))
    args = container.get("command", []) + container.get("args", [])
    for flag, value in itertools.pairwise(args):
        if flag == "--backend-store-uri" and value.startswith("sqlite:///"):
            paths.append(str(Path(value.removeprefix("sqlite:///")).parent))
        if flag == "--artifacts-destination":
            paths.append(value)
    paths += re.findall(r"--dir (\S+)", " ".join(args))
    return paths


def test_every_path_a_container_writes_is_a_writable_volume(objects: tuple[Obj, ...]) -> None:
    for where, _, container, _ in every_container(objects):
        mounts = [m["mountPath"] for m in container.get("volumeMounts", []) if not m.get("readOnly")]
        for path in writable_paths(container):
            assert any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts), f"{where}: {path}"


def test_every_volume_mount_has_a_volume_and_every_reference_an_object(objects: tuple[Obj, ...]) -> None:
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    for obj in objects:
        if obj["kind"] not in WORKLOADS:
            continue
        spec = pod_spec(obj)
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        claims = {t["metadata"]["name"] for t in obj["spec"].get("volumeClaimTemplates", [])}
        for container, _ in containers(spec):
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes.keys() | claims, f"{obj['metadata']['name']}: {mount['name']}"
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert ("ConfigMap", source["configMapRef"]["name"]) in names
        for volume in volumes.values():
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in names
            if "persistentVolumeClaim" in volume:
                assert ("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]) in names


# --- secrets -------------------------------------------------------------------------------------------------


def secret_refs(objects: tuple[Obj, ...]) -> set[str]:
    """Return every key of the Secret iris-secrets that the objects reference."""
    keys = set()
    for _, _, container, _ in every_container(objects):
        for entry in container.get("env", []):
            if ref := entry.get("valueFrom", {}).get("secretKeyRef"):
                assert ref["name"] == "iris-secrets"
                keys.add(ref["key"])
        assert all("secretRef" not in source for source in container.get("envFrom", []))
    for obj in objects:
        if obj["kind"] == "TriggerAuthentication":
            for ref in obj["spec"]["secretTargetRef"]:
                assert ref["name"] == "iris-secrets"
                keys.add(ref["key"])
    return keys


def test_no_password_key_or_credentialled_url_is_written_inline(objects: tuple[Obj, ...]) -> None:
    # The Secret is the operator's (kubectl create secret generic iris-secrets ...): none ships here.
    assert [o for o in objects if o["kind"] == "Secret"] == []
    for where, _, container, _ in every_container(objects):
        from_secret = set()
        for entry in container.get("env", []):
            name, value = entry["name"], entry.get("value")
            assert not ("value" in entry and "valueFrom" in entry), f"{where}: {name} has both"
            if value is None:
                if "secretKeyRef" in entry.get("valueFrom", {}):
                    from_secret.add(name)
                continue
            assert not any(word in name.upper() for word in SECRET_WORDS), f"{where}: {name} is inline"
            for password in URL_PASSWORD.findall(value):
                # Only a reference to an earlier variable read from the Secret: Kubernetes expands it in the pod.
                reference = REFERENCE.fullmatch(password)
                assert reference and reference.group(1) in from_secret, f"{where}: {name} holds a password"
        for word in container.get("command", []) + container.get("args", []):
            assert not URL_PASSWORD.search(word), f"{where}: a password on the command line"
    for obj in objects:
        if obj["kind"] == "ConfigMap":
            for key, value in obj.get("data", {}).items():
                assert not URL_PASSWORD.search(value), f"ConfigMap {key}"
                assert not any(word in key.upper() for word in SECRET_WORDS) or key.endswith(".conf"), key


def documented_secret_keys() -> list[set[str]]:
    """Return the keys of each `kubectl create secret generic iris-secrets` command docs/deployment.md gives."""
    commands: list[set[str]] = []
    lines = DOCS.read_text().splitlines()
    for number, line in enumerate(lines):
        if "create secret generic iris-secrets" in line:
            command = [line]
            while command[-1].rstrip().endswith("\\"):
                command.append(lines[number + len(command)])
            commands.append(set(re.findall(r"--from-literal=([a-z0-9-]+)=", " ".join(command))))
    return commands


def test_the_docs_create_every_secret_key_each_variant_references(objects: tuple[Obj, ...]) -> None:
    documented = documented_secret_keys()

    assert secret_refs(objects) in documented, (secret_refs(objects), documented)


def test_urls_name_services_of_the_rendering() -> None:
    objs = render(K8S)
    services = {o["metadata"]["name"]: {p["port"] for p in o["spec"]["ports"]} for o in objs if o["kind"] == "Service"}
    for where, _, container, _ in every_container(objs):
        for name in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "MLFLOW_TRACKING_URI"):
            if (value := env_value(container, name)) is not None:
                url = urlsplit(value.replace("$(", "").replace(")", ""))
                assert url.port in services.get(url.hostname or "", set()), f"{where}: {name}"


# --- workloads -----------------------------------------------------------------------------------------------


def test_the_trainer_is_a_job_running_python_m_training_in_the_training_image(objects: tuple[Obj, ...]) -> None:
    job = one(objects, "Job", "trainer")
    (container,) = pod_spec(job)["containers"]

    assert container["command"] + container.get("args", []) == ["python", "-m", "training", "--if-missing"]
    # Dockerfile.worker built with EXTRAS=training: the worker extra has neither full MLflow nor matplotlib.
    assert "/iris-trainer:" in container["image"]
    assert pod_spec(job)["restartPolicy"] == "Never"


def test_the_worker_consumes_the_queue_the_config_names() -> None:
    objs = render(K8S)
    (worker,) = pod_spec(one(objs, "Deployment", "worker"))["containers"]
    args = worker["args"]

    assert args[args.index("-Q") + 1] == config(objs)["IRIS_QUEUE"]
    assert args[args.index("--pool") + 1] == env_value(worker, "WORKER_POOL")
    assert {p["containerPort"] for p in worker["ports"]} == {int(env_value(worker, "WORKER_METRICS_PORT") or 0)}


def test_redis_runs_with_aof_noeviction_a_volume_and_the_acl_compose_uses() -> None:
    objs = render(K8S)
    redis = one(objs, "StatefulSet", "redis")
    (container,) = pod_spec(redis)["containers"]
    command = " ".join(container["command"] + container["args"])

    for setting in ("--appendonly yes", "--appendfsync everysec", "--maxmemory-policy noeviction",
                    'user default off', "--aclfile"):
        assert setting in command
    assert [t["metadata"]["name"] for t in redis["spec"]["volumeClaimTemplates"]] == ["data"]
    acl = next(o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("redis-acl-"))

    def rules(text: str) -> list[str]:
        return [line for line in text.splitlines() if line and not line.startswith("#")]

    # kustomize reads no file outside deploy/k8s: the copy must stay the rules compose uses.
    assert rules(acl["data"]["iris-acl.conf"]) == rules((ROOT / "deploy" / "redis" / "iris-acl.conf").read_text())


def test_mlflow_keeps_its_store_and_artifacts_on_claims() -> None:
    objs = render(K8S)
    spec = pod_spec(one(objs, "Deployment", "mlflow"))
    (container,) = spec["containers"]
    claims = {v["name"] for v in spec["volumes"] if "persistentVolumeClaim" in v}
    on_claims = [m["mountPath"] for m in container["volumeMounts"] if m["name"] in claims]
    args = container["command"]

    store = args[args.index("--backend-store-uri") + 1].removeprefix("sqlite:///")
    artifacts = args[args.index("--artifacts-destination") + 1]
    assert str(Path(store).parent) in on_claims and artifacts in on_claims
    assert one(objs, "Deployment", "mlflow")["spec"]["strategy"]["type"] == "Recreate"


def test_the_api_scales_on_cpu_and_owns_no_replica_count(objects: tuple[Obj, ...]) -> None:
    hpa = one(objects, "HorizontalPodAutoscaler", "api")

    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "api"}
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    # A replicas field would be reset to its value by every `kubectl apply`, fighting the autoscalers.
    assert "replicas" not in one(objects, "Deployment", "api")["spec"]
    assert "replicas" not in one(objects, "Deployment", "worker")["spec"]


# --- KEDA ----------------------------------------------------------------------------------------------------


def test_keda_scales_the_worker_deployment_on_both_queues(objects: tuple[Obj, ...]) -> None:
    scaled = one(objects, "ScaledObject", "worker")
    spec = scaled["spec"]
    target = spec["scaleTargetRef"]
    worker = one(objects, "Deployment", target["name"])
    queue = config(objects)["IRIS_QUEUE"]

    assert target.get("kind", "Deployment") == "Deployment"
    assert "/iris-worker:" in pod_spec(worker)["containers"][0]["image"]
    assert 1 <= spec["minReplicaCount"] < spec["maxReplicaCount"]
    triggers = spec["triggers"]
    assert [t["type"] for t in triggers] == ["redis", "redis"]
    assert sorted(t["metadata"]["listName"] for t in triggers) == sorted(
        [queue, Settings(iris_queue=queue).rows_queue])
    for trigger in triggers:
        assert int(trigger["metadata"]["listLength"]) > 0
        assert trigger["metadata"].get("databaseIndex", "0") == "0"  # the broker's database in the URLs
        auth = one(objects, "TriggerAuthentication", trigger["authenticationRef"]["name"])
        assert "password" in {ref["parameter"] for ref in auth["spec"]["secretTargetRef"]}
        assert "password" not in trigger["metadata"]
        if "address" in trigger["metadata"]:  # else the TriggerAuthentication gives it (external services)
            host = trigger["metadata"]["address"].rsplit(":", 1)[0]
            assert named(objects, "Service", host.split(".")[0]) is not None, host
        else:
            assert "address" in {ref["parameter"] for ref in auth["spec"]["secretTargetRef"]}


def test_keda_reaches_the_in_cluster_redis_by_its_full_name_as_its_own_acl_user() -> None:
    objs = render(K8S)
    triggers = one(objs, "ScaledObject", "worker")["spec"]["triggers"]
    service = one(objs, "Service", "redis")
    acl = next(o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("redis-acl-"))
    keda_rules = [line for line in acl["data"]["keda-acl.conf"].splitlines() if line and not line.startswith("#")]

    for trigger in triggers:
        # KEDA's operator runs in its own namespace: a short name would not resolve there.
        host, port = trigger["metadata"]["address"].rsplit(":", 1)
        assert host == f"redis.{NAMESPACE}.svc.cluster.local"
        assert int(port) in {p["port"] for p in service["spec"]["ports"]}
        assert trigger["metadata"]["username"] == "keda"
    # Its user reads exactly the two lists: the script KEDA runs calls TYPE and LLEN on them.
    (line,) = keda_rules
    assert sorted(re.findall(r"~(\S+)", line)) == sorted(t["metadata"]["listName"] for t in triggers)
    assert {"+type", "+llen", "+eval", "-@all"} <= set(line.split())


def test_each_list_length_carries_the_comment_pointing_at_the_docs() -> None:
    lines = [line for line in (K8S / "base" / "worker.yaml").read_text().splitlines() if "listLength:" in line]

    assert len(lines) == 2
    assert all(line.rstrip().endswith(LIST_LENGTH_COMMENT) for line in lines)


def test_keda_can_reach_its_maximum_before_the_apis_admission_bound_stops_a_list_growing(
        objects: tuple[Obj, ...]) -> None:
    # Admission refuses work once the lists hold QUEUE_MAX_LENGTH messages, so a list never grows past it: a
    # target above QUEUE_MAX_LENGTH / maxReplicaCount leaves the last replicas out of reach under overload.
    scaled = one(objects, "ScaledObject", "worker")
    (api,) = [c for c in pod_spec(one(objects, "Deployment", "api"))["containers"] if c["name"] == "api"]
    bound = int(env_value(api, "QUEUE_MAX_LENGTH") or Settings().queue_max_length)
    for trigger in scaled["spec"]["triggers"]:
        assert int(trigger["metadata"]["listLength"]) * scaled["spec"]["maxReplicaCount"] <= bound, trigger
    docs = (ROOT / "docs" / "deployment.md").read_text()
    assert f"**{trigger['metadata']['listLength']} for both lists**" in docs


# --- disruption budgets --------------------------------------------------------------------------------------


def selects(selector: Obj, labels: dict[str, str]) -> bool:
    """Say whether a Kubernetes label selector (matchLabels and matchExpressions) selects these labels."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def pods(objects: tuple[Obj, ...]) -> dict[str, dict[str, str]]:
    """Return the pod labels of every workload, by workload name."""
    return {o["metadata"]["name"]: o["spec"]["template"]["metadata"]["labels"] for o in objects
            if o["kind"] in WORKLOADS}


def test_disruption_budgets_cover_the_api_and_the_workers(objects: tuple[Obj, ...]) -> None:
    budgets = [o for o in objects if o["kind"] == "PodDisruptionBudget"]
    covered = {name for budget in budgets for name, labels in pods(objects).items()
               if selects(budget["spec"]["selector"], labels)}

    assert covered == {"api", "worker"}
    for budget in budgets:
        assert [name for name, labels in pods(objects).items() if selects(budget["spec"]["selector"], labels)]
        assert "maxUnavailable" in budget["spec"] or "minAvailable" in budget["spec"]


# --- network policies ----------------------------------------------------------------------------------------

# Pods outside the service's own workloads, as (namespace, labels): KEDA's operator and metrics server from its
# Helm chart, a Prometheus, a debugging pod in the namespace itself and a stranger elsewhere.
OUTSIDERS = {
    "keda-operator": ("keda", {"app.kubernetes.io/name": "keda-operator", "app": "keda-operator"}),
    "keda-metrics": ("keda", {"app.kubernetes.io/name": "keda-operator-metrics-apiserver"}),
    "prometheus": ("monitoring", {"app.kubernetes.io/name": "prometheus"}),
    "debug": (NAMESPACE, {"run": "debug"}),
    "stranger": ("default", {"app": "stranger"}),
}


def admitted(objects: tuple[Obj, ...], source: tuple[str, dict[str, str]], target: dict[str, str], port: int,
             target_container: Obj) -> bool:
    """Say whether the objects' NetworkPolicies let ``source`` (namespace, labels) reach the target pod's port."""
    namespace, labels = source
    namespace_labels = {"kubernetes.io/metadata.name": namespace}
    policies = [o for o in objects if o["kind"] == "NetworkPolicy" and "Ingress" in o["spec"].get("policyTypes", [])
                and selects(o["spec"]["podSelector"], target)]
    if not policies:
        return True  # a pod no policy selects is not isolated
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            ports = rule.get("ports")
            if ports and port not in {port_of(target_container, p["port"]) for p in ports}:
                continue
            peers = rule.get("from")
            if not peers:
                return True
            for peer in peers:
                if "ipBlock" in peer:
                    continue
                in_namespace = (selects(peer["namespaceSelector"], namespace_labels) if "namespaceSelector" in peer
                                else namespace == NAMESPACE)
                if in_namespace and selects(peer.get("podSelector", {}), labels):
                    return True
    return False


def reachable(objects: tuple[Obj, ...], workload: str, port: int) -> set[str]:
    """Return which pods (workloads of the rendering and OUTSIDERS, by name) may reach a workload's port."""
    obj = next(o for o in objects if o["kind"] in WORKLOADS and o["metadata"]["name"] == workload)
    sources = {name: (NAMESPACE, labels) for name, labels in pods(objects).items()} | OUTSIDERS
    target = obj["spec"]["template"]["metadata"]["labels"]
    container = pod_spec(obj)["containers"][0]
    return {name for name, source in sources.items() if admitted(objects, source, target, port, container)}


def test_network_policies_deny_by_default_and_open_only_the_intended_paths(objects: tuple[Obj, ...]) -> None:
    everyone = set(pods(objects)) | set(OUTSIDERS)
    deny = one(objects, "NetworkPolicy", "default-deny-ingress")

    assert deny["spec"]["podSelector"] == {} and "ingress" not in deny["spec"]
    assert reachable(objects, "api", 9191) == everyone  # the front
    assert reachable(objects, "api", 22) == set()
    assert reachable(objects, "worker", 9192) == {"prometheus"}
    assert reachable(objects, "trainer", 8080) == set()


def test_only_the_api_the_workers_and_kedas_operator_reach_redis_and_only_workers_and_trainer_mlflow() -> None:
    objs = render(K8S)

    assert reachable(objs, "redis", 6379) == {"api", "worker", "keda-operator"}
    assert reachable(objs, "mlflow", 8081) == {"worker", "trainer"}
