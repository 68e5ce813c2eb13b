"""Deployment checks: the Helm chart rendered with the real Helm library, the raw manifests,
strict Kubernetes 1.37 schema validation, a hardening and coherence policy over every rendered
object, and `trustgate config check` on every gateway ConfigMap."""

import copy
import fnmatch
import os
import pathlib
import subprocess
import tomllib

import helm_python
import kubernetes_validate
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "trustgate"
RAW = ROOT / "deploy" / "k8s"
TRUSTGATE = os.environ.get("TRUSTGATE_BIN", str(ROOT / "target" / "debug" / "trustgate"))
KUBE_VERSION = "1.37.0"

# name -> (release namespace, values)
VALUE_SETS = {
    "default": ("trustgate", {}),
    "jwks-tls-fixed-replicas": (
        "gateway-system",
        {
            "k8sTrust": {"mode": "jwks"},
            "gateway": {"tls": {"enabled": True, "secretName": "trustgate-tls"}},
            "worker": {"autoscaling": {"enabled": False}, "replicas": 3},
        },
    ),
    "custom-ports-and-rules": (
        "edge",
        {
            "gateway": {"wsPort": 8443, "adminPort": 9090},
            "worker": {"tokenExpirationSeconds": 1800},
            "k8sTrust": {
                "audience": "gateway.example.com",
                "allow": [
                    {"serviceAccount": "trustgate-worker"},
                    {"namespace": "batch", "serviceAccount": "job-*", "roles": ["worker"], "skipPairing": False},
                ],
            },
        },
    ),
    "operator-plugins-no-networkpolicy": (
        "trustgate",
        {
            "networkPolicy": {"enabled": False},
            "plugins": {
                "configMap": "trustgate-plugins",
                "extra": [{"name": "office-hours", "file": "office-hours.wasm", "sha256": "ab" * 32, "config": {"from_hour": "8"}}],
            },
        },
    ),
    "workers-elsewhere": ("trustgate", {"worker": {"enabled": False}}),
    "external-nats": (
        "trustgate",
        {"nats": {"enabled": False}, "cluster": {"backend": "nats", "servers": ["tls://nats.infra.svc:4222"]}},
    ),
    "single-replica-file": (
        "trustgate",
        {"gateway": {"replicas": 1, "wsPort": 7400, "adminPort": 7401}, "cluster": {"backend": "file"}, "nats": {"enabled": False}},
    ),
}

# Value sets whose config references files only present in a cluster (mounted plugins).
NEEDS_CLUSTER_FILES = {"operator-plugins-no-networkpolicy"}


def render(namespace, values):
    chart = helm_python.Chart.load(str(CHART))
    chart.validate_schema(values)
    out = chart.render(values, name="trustgate", namespace=namespace, is_install=True)
    objects = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(o for o in yaml.safe_load_all(text) if o)
    return objects


def raw_objects():
    kustomization = yaml.safe_load((RAW / "kustomization.yaml").read_text())
    objects = []
    for name in kustomization["resources"]:
        objects.extend(o for o in yaml.safe_load_all((RAW / name).read_text()) if o)
    return objects


def sources():
    out = {"raw": ("trustgate", raw_objects())}
    for name, (ns, values) in VALUE_SETS.items():
        out[f"helm:{name}"] = (ns, render(ns, values))
    return out


SOURCES = sources()


def of_kind(objects, kind):
    return [o for o in objects if o["kind"] == kind]


def one(objects, kind, name_suffix):
    found = [o for o in of_kind(objects, kind) if o["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, f"expected one {kind} *{name_suffix}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def gateway_config(objects):
    cm = one(objects, "ConfigMap", "gateway")
    return cm["data"]["trustgate.toml"], tomllib.loads(cm["data"]["trustgate.toml"])


def test_chart_lints_clean():
    report = helm_python.lint(str(CHART), strict=True, namespace="trustgate", kube_version="v1.37.0")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_kustomization_lists_every_manifest():
    listed = set(yaml.safe_load((RAW / "kustomization.yaml").read_text())["resources"])
    present = {p.name for p in RAW.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_every_object_passes_strict_schema_validation(source):
    _, objects = SOURCES[source]
    assert objects
    for obj in objects:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_pods_are_hardened(source):
    _, objects = SOURCES[source]
    deployments = of_kind(objects, "Deployment") + of_kind(objects, "StatefulSet")
    assert deployments
    for d in deployments:
        pod = d["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, c["name"]
            assert sc["readOnlyRootFilesystem"] is True, c["name"]
            assert sc["runAsNonRoot"] is True, c["name"]
            assert "ALL" in sc["capabilities"]["drop"], c["name"]
            assert sc["seccompProfile"]["type"] == "RuntimeDefault", c["name"]
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), (c["name"], kind)
            assert not c["image"].endswith(":latest") and ":" in c["image"]


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_rendered_configuration_is_coherent(source):
    namespace, objects = SOURCES[source]
    _, config = gateway_config(objects)
    gw = one(objects, "Deployment", "gateway")
    gw_pod = gw["spec"]["template"]["spec"]
    gw_container = gw_pod["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in gw_container["ports"]}

    # ports: config, container, probes and Service agree
    assert config["gateway"]["listen"].endswith(f":{ports['ws']}")
    assert config["admin"]["listen"].endswith(f":{ports['admin']}")
    for probe in ("livenessProbe", "readinessProbe"):
        assert gw_container[probe]["httpGet"]["port"] in ("admin", ports["admin"])
    assert gw_container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert gw_container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    svc = one(objects, "Service", "gateway")
    svc_ports = {p["name"]: p for p in svc["spec"]["ports"]}
    assert svc_ports["ws"]["targetPort"] == "ws" and svc_ports["ws"]["port"] == ports["ws"]
    assert svc_ports["admin"]["targetPort"] == "admin" and svc_ports["admin"]["port"] == ports["admin"]
    assert svc["spec"]["selector"].items() <= gw["spec"]["template"]["metadata"]["labels"].items()

    # the gateway may create TokenReviews and nothing else
    role = one(objects, "ClusterRole", "tokenreview")
    assert role["rules"] == [{"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]}]
    binding = one(objects, "ClusterRoleBinding", "tokenreview")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": gw_pod["serviceAccountName"], "namespace": namespace}]
    assert config["kubernetes"] is not None

    # the plugin chain: k8s-sa-trust first, audiences and rules present
    trust = config["auth"]["plugins"][0]
    assert trust["builtin"] == "k8s-sa-trust"
    rules = trust["config"]["allow"]
    assert rules, "an empty allow list must never render"
    audiences = trust["config"]["audiences"]
    assert audiences and all(audiences)

    pdb = one(objects, "PodDisruptionBudget", "gateway")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= gw["spec"]["template"]["metadata"]["labels"].items()

    workers = [d for d in of_kind(objects, "Deployment") if d["metadata"]["name"].endswith("worker")]
    for w in workers:
        pod = w["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        sa = one(objects, "ServiceAccount", pod["serviceAccountName"])
        assert sa["automountServiceAccountToken"] is False
        projected = [v["projected"] for v in pod["volumes"] if "projected" in v]
        assert len(projected) == 1
        token = projected[0]["sources"][0]["serviceAccountToken"]
        assert token["audience"] in audiences, "the projected audience must be one the gateway accepts"
        assert token["expirationSeconds"] <= 3600
        ns = w["metadata"]["namespace"]
        assert any(
            fnmatch.fnmatchcase(ns, r["namespace"])
            and fnmatch.fnmatchcase(pod["serviceAccountName"], r["service_account"])
            and "worker" in r["roles"]
            for r in rules
        ), "the worker ServiceAccount must be in the allow rules"
        args = pod["containers"][0]["args"]
        url = args[args.index("--gateway") + 1]
        tls = "tls" in config["gateway"]
        assert url == f"{'wss' if tls else 'ws'}://{svc['metadata']['name']}.{namespace}.svc:{ports['ws']}"
        assert "--k8s-trust" in args
        mount = pod["containers"][0]["volumeMounts"][0]["mountPath"]
        assert args[args.index("--token-path") + 1] == f"{mount}/{token['path']}"
        hpas = [h for h in of_kind(objects, "HorizontalPodAutoscaler") if h["spec"]["scaleTargetRef"]["name"] == w["metadata"]["name"]]
        assert len(hpas) == 1 or "replicas" in w["spec"]

    gw_labels = gw["spec"]["template"]["metadata"]["labels"]
    for policy in of_kind(objects, "NetworkPolicy"):
        selects_gateway = policy["spec"]["podSelector"].get("matchLabels", {}).items() <= gw_labels.items() and policy["spec"]["podSelector"]
        if not selects_gateway:
            continue
        for rule in policy["spec"].get("ingress", []):
            for p in rule.get("ports", []):
                assert p["port"] in (ports["ws"], ports["admin"])

    # the admin token: one Secret for every replica, mounted where the config reads it
    token_file = config["admin"]["token_file"]
    mounts = {m["name"]: m["mountPath"] for m in gw_container["volumeMounts"]}
    volumes = {v["name"]: v for v in gw_pod["volumes"]}
    secret_mount = [n for n, v in volumes.items() if "secret" in v and token_file.startswith(mounts[n] + "/")]
    assert len(secret_mount) == 1, "admin.token_file must be in a mounted Secret"

    # no pairing state on a pod's own disk
    state = [n for n, v in volumes.items() if mounts.get(n) == config["gateway"]["state_dir"]]
    for n in state:
        assert "emptyDir" not in volumes[n], "pairing state must not live in an emptyDir"
    cluster = config.get("cluster", {"backend": "file"})
    if cluster["backend"] == "file":
        assert gw["spec"]["replicas"] == 1, "the file backend is one replica"
        assert state and "persistentVolumeClaim" in volumes[state[0]]
    else:
        assert not state
        assert cluster["servers"]
        env = {e["name"]: e for e in gw_container.get("env", [])}
        assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name", "the replica id is the pod name"


NATS_SOURCES = sorted(s for s in SOURCES if s not in ("helm:external-nats", "helm:single-replica-file"))


@pytest.mark.parametrize("source", NATS_SOURCES)
def test_replicas_share_state_on_a_nats_cluster(source):
    namespace, objects = SOURCES[source]
    _, config = gateway_config(objects)
    gw = one(objects, "Deployment", "gateway")
    assert gw["spec"]["replicas"] >= 2
    nats = one(objects, "StatefulSet", "nats")
    pod = nats["spec"]["template"]["spec"]
    labels = nats["spec"]["template"]["metadata"]["labels"]

    # three JetStream nodes on persistent volumes, routed to each other by stable names
    assert nats["spec"]["replicas"] == 3
    claims = nats["spec"]["volumeClaimTemplates"]
    assert [c["metadata"]["name"] for c in claims] == ["data"]
    assert {"name": "data", "mountPath": "/data"} in pod["containers"][0]["volumeMounts"]
    conf = one(objects, "ConfigMap", "nats")["data"]["nats.conf"]
    assert "store_dir: /data" in conf
    headless = one(objects, "Service", "nats-headless")
    assert headless["spec"]["clusterIP"] == "None" and nats["spec"]["serviceName"] == headless["metadata"]["name"]
    for i in range(3):
        assert f"{nats['metadata']['name']}-{i}.{headless['metadata']['name']}.{namespace}.svc:6222" in conf

    # the gateway reaches it through its client Service; buckets replicated on every node
    client = one(objects, "Service", f"{nats['metadata']['name']}")
    assert config["cluster"]["backend"] == "nats"
    assert config["cluster"]["servers"] == [f"nats://{client['metadata']['name']}.{namespace}.svc:4222"]
    assert [p["port"] for p in client["spec"]["ports"]] == [4222]
    assert config["cluster"]["bucket_replicas"] == 3

    # disruptions keep a quorum
    pdb = one(objects, "PodDisruptionBudget", "nats")
    assert pdb["spec"]["minAvailable"] == 2
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()

    # only the gateway reaches NATS; the nodes reach each other on the route port
    if not of_kind(objects, "NetworkPolicy"):
        return  # network policies switched off
    policy = one(objects, "NetworkPolicy", "nats")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    gw_labels = gw["spec"]["template"]["metadata"]["labels"]
    ingress = policy["spec"]["ingress"]
    clients = [r for r in ingress if any(p["port"] == 4222 for p in r["ports"])]
    assert len(clients) == 1
    assert [f["podSelector"]["matchLabels"].items() <= gw_labels.items() for f in clients[0]["from"]] == [True]
    routes = [r for r in ingress if any(p["port"] == 6222 for p in r["ports"])]
    assert [f["podSelector"]["matchLabels"].items() <= labels.items() for f in routes[0]["from"]] == [True]
    assert {p["port"] for r in ingress for p in r["ports"]} == {4222, 6222}
    # and the gateway's own egress admits NATS
    gw_policy = [p for p in of_kind(objects, "NetworkPolicy") if p["spec"]["podSelector"].get("matchLabels", {}).items() <= gw_labels.items() and p["spec"]["podSelector"].get("matchLabels")]
    assert any(p["port"] == 4222 for pol in gw_policy for r in pol["spec"]["egress"] for p in r.get("ports", []))


@pytest.mark.parametrize(
    "values, message",
    [
        ({"cluster": {"backend": "file"}}, "replicas to 1"),
        ({"cluster": {"backend": "nats", "servers": []}, "nats": {"enabled": False}}, "needs a NATS"),
    ],
)
def test_shared_state_misconfigurations_fail_to_render(values, message):
    chart = helm_python.Chart.load(str(CHART))
    merged = copy.deepcopy(chart.values)
    for k, v in values.items():
        merged[k] = {**merged[k], **v}
    with pytest.raises(helm_python.HelmError, match=message):
        chart.render(merged, name="trustgate", namespace="trustgate")


def test_tls_values_switch_the_listener_and_the_workers_to_wss():
    _, objects = SOURCES["helm:jwks-tls-fixed-replicas"]
    _, config = gateway_config(objects)
    assert config["gateway"]["tls"] == {"cert_file": "/etc/trustgate/tls/tls.crt", "key_file": "/etc/trustgate/tls/tls.key"}
    assert config["auth"]["plugins"][0]["config"]["mode"] == "jwks"
    assert not of_kind(objects, "HorizontalPodAutoscaler")


def test_operator_plugins_are_pinned():
    _, objects = SOURCES["helm:operator-plugins-no-networkpolicy"]
    _, config = gateway_config(objects)
    extra = config["auth"]["plugins"][1]
    assert extra == {"name": "office-hours", "path": "/etc/trustgate/plugins/office-hours.wasm", "sha256": "ab" * 32, "config": {"from_hour": "8"}}
    assert not of_kind(objects, "NetworkPolicy")


@pytest.mark.parametrize(
    "values",
    [
        {"k8sTrust": {"allow": []}},
        {"k8sTrust": {"allow": [{"namespace": "x"}]}},
        {"k8sTrust": {"audience": ""}},
        {"worker": {"tokenExpirationSeconds": 86400}},
        {"gateway": {"tls": {"enabled": True}}},
        {"plugins": {"extra": [{"name": "p", "file": "p.wasm", "sha256": "not-a-hash"}]}},
        {"gateway": {"replicas": 2, "wsPort": 7400, "adminPort": 7401, "colour": "blue"}},
    ],
)
def test_bad_values_fail_at_install_time(values):
    chart = helm_python.Chart.load(str(CHART))
    with pytest.raises(helm_python.HelmError):
        chart.validate_schema(values)


def test_an_empty_allow_list_fails_to_render():
    # Rendering validates the schema first; the template's own `fail` guards installs that
    # skip schema validation.
    chart = helm_python.Chart.load(str(CHART))
    values = copy.deepcopy(chart.values)
    values["k8sTrust"]["allow"] = []
    with pytest.raises(helm_python.HelmError, match="allow"):
        chart.render(values, name="trustgate", namespace="trustgate")
    template = (CHART / "templates" / "configmap.yaml").read_text()
    assert 'fail "k8sTrust.allow is empty' in template


@pytest.mark.parametrize("source", sorted(s for s in SOURCES if s.split(":")[-1] not in NEEDS_CLUSTER_FILES))
def test_gateway_configmap_passes_trustgate_config_check(source, tmp_path):
    _, objects = SOURCES[source]
    text, _ = gateway_config(objects)
    path = tmp_path / "trustgate.toml"
    path.write_text(text)
    result = subprocess.run([TRUSTGATE, "config", "check", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "k8s-sa-trust" in result.stdout


def test_dockerfile_is_multi_stage_and_runs_as_non_root():
    lines = [l.strip() for l in (ROOT / "deploy" / "Dockerfile").read_text().splitlines() if l.strip() and not l.startswith("#")]
    froms = [l for l in lines if l.upper().startswith("FROM ")]
    assert len(froms) >= 2, "multi-stage build"
    final = lines[lines.index(froms[-1]):]
    assert "distroless" in froms[-1]
    user = [l for l in final if l.upper().startswith("USER ")]
    assert user and user[-1].split()[1].split(":")[0] not in ("0", "root")
    assert any(l.startswith("ENTRYPOINT") and "trustgate" in l for l in final)
    assert any("wasm32-wasip2" in l for l in lines)
    # the production image leaves the development cluster issuer out
    assert any("cargo build" in l and "--no-default-features" in l for l in lines)
