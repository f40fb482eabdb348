"""The Helm chart is an API (STYLE.md 14): rendered offline with helm-python-sdk (Helm's Go SDK
through ctypes, no cluster, no helm binary) for the default values and every
``ci/*-values.yaml``, linted strictly, every manifest validated against the Kubernetes schema,
and its contract with the app checked: probes on the routes the app serves, on the port it
listens on, settings the app accepts (every one of them reachable from the values), no secret
in a ConfigMap, hardened pods, the public listener alone behind the Ingress.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate  # type: ignore[import-untyped]  # ships no type information
import pytest
import yaml

from broker.config import Settings as BrokerSettings
from broker.config import load_settings
from broker.web import health

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "hubspot-token-broker"
SCENARIOS = [
    "default",
    *sorted(p.name.removesuffix("-values.yaml") for p in CHART.glob("ci/*-values.yaml")),
]
KUBE_VERSION = kubernetes_validate.latest_version()
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}  # no schema in kubernetes-validate
RELEASE, NAMESPACE = "htb", "tokens"
ALL_INTERFACES = "0.0.0.0"  # noqa: S104 - what a container must listen on; nothing binds here
TMP = "/tmp"  # noqa: S108 - the container's /tmp mount point, not a file this test writes
# Settings the app wraps in Secret: they may only ever come from a Kubernetes Secret.
SECRET_SETTINGS = {
    f"BROKER_{f.name.upper()}" for f in dataclasses.fields(BrokerSettings) if f.type == "Secret"
}
SETTINGS_KEYS = {f"BROKER_{f.name.upper()}" for f in dataclasses.fields(BrokerSettings)}
# Syntactically valid stand-ins for secret settings the scenario leaves to a Secret it does
# not render (an existing Secret, secrets.valueFrom).
PLACEHOLDERS = {
    "BROKER_DATABASE_URL": "postgresql://broker@db/broker",
    "BROKER_REDIS_URL": "redis://redis:6379/0",
    "BROKER_VAULT_TOKEN": "placeholder",
    "BROKER_VAULT_SECRET_ID": "placeholder",
    "BROKER_WEBHOOK_URLS": "https://receiver.example.com/hook",
    "BROKER_WEBHOOK_SECRET": "whsec_cGxhY2Vob2xkZXItcGxhY2Vob2xkZXItcGxhY2Vob2xkZXI=",
}
# Settings naming files the server reads: each must point into a read-only mount.
FILE_SETTINGS = {
    "BROKER_TLS_CERT_FILE",
    "BROKER_TLS_KEY_FILE",
    "BROKER_VAULT_CACERT",
    "BROKER_CA_BUNDLE",
}


def scenario_values(name: str) -> dict[str, Any]:
    if name == "default":
        return {}
    loaded: dict[str, Any] = yaml.safe_load((CHART / "ci" / f"{name}-values.yaml").read_text())
    return loaded


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render(chart: helm.Chart, values: dict[str, Any]) -> list[dict[str, Any]]:
    manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs: list[dict[str, Any]] = []
    for path, text in manifests.items():
        if path.endswith(".txt"):
            continue
        docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return docs


class Rendered:
    """One scenario's manifests, with lookups by kind."""

    def __init__(self, name: str, values: dict[str, Any], docs: list[dict[str, Any]]) -> None:
        self.name, self.values, self.docs = name, values, docs

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        found = self.all(kind)
        assert len(found) == 1, f"{self.name}: {len(found)} {kind}s"
        return found[0]

    @property
    def merged(self) -> dict[str, Any]:
        return _merged(self.name)

    @property
    def deployment(self) -> dict[str, Any]:
        return self.one("Deployment")

    @property
    def pod(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.deployment["spec"]["template"]["spec"]
        return spec

    @property
    def container(self) -> dict[str, Any]:
        containers: list[dict[str, Any]] = self.pod["containers"]
        (container,) = containers
        return container

    def service(self, component: str) -> dict[str, Any]:
        """The Service whose app.kubernetes.io/component is ``server`` or ``public``."""
        (found,) = [
            s
            for s in self.all("Service")
            if s["metadata"]["labels"]["app.kubernetes.io/component"] == component
        ]
        return found

    @property
    def config(self) -> dict[str, str]:
        data: dict[str, str] = self.one("ConfigMap")["data"]
        return data

    @property
    def job(self) -> dict[str, Any]:
        return self.one("Job")


@functools.cache
def _merged(name: str) -> dict[str, Any]:
    with helm.Chart.load(CHART) as loaded:
        merged: dict[str, Any] = loaded.merge_values(scenario_values(name))
    return merged


@functools.cache
def _rendered(name: str) -> Rendered:
    with helm.Chart.load(CHART) as loaded:
        return Rendered(name, scenario_values(name), render(loaded, scenario_values(name)))


@pytest.fixture(params=SCENARIOS)
def rendered(request: pytest.FixtureRequest) -> Rendered:
    return _rendered(request.param)


def test_scenarios_exist() -> None:
    assert {"minimal", "kubernetes-auth", "existing-secret", "approle", "full"} <= set(SCENARIOS)


# --- lint and schema validation ---------------------------------------------------------------
@pytest.mark.parametrize("name", SCENARIOS)
def test_helm_lint_strict(name: str) -> None:
    report = helm.lint(CHART, scenario_values(name), strict=True, kube_version=f"v{KUBE_VERSION}")
    assert report["total_charts_linted"] == 1
    assert report["errors"] == []
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # warnings and errors
    assert problems == []


def test_manifests_are_valid_kubernetes(rendered: Rendered) -> None:
    kinds = {doc["kind"] for doc in rendered.docs}
    assert {"Deployment", "Service", "ConfigMap", "Job"} <= kinds
    for doc in rendered.docs:
        if doc["kind"] in CRD_KINDS:
            continue  # structure checked in test_monitoring_resources
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def test_validation_catches_a_broken_manifest(rendered: Rendered) -> None:
    broken = json.loads(json.dumps(rendered.deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["pth"] = "/"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBE_VERSION, strict=True)


# --- the pods ---------------------------------------------------------------------------------
def _dockerfile_user() -> int:
    (user,) = re.findall(r"^USER\s+(\d+)", (ROOT / "deploy" / "Dockerfile").read_text(), re.M)
    return int(user)


def test_pods_are_hardened(rendered: Rendered) -> None:
    job_pod = rendered.job["spec"]["template"]["spec"]
    for pod in (rendered.pod, job_pod):
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True
        assert context["runAsUser"] == _dockerfile_user() != 0
        assert context["fsGroup"] == context["runAsGroup"] == 10001
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        (container,) = pod["containers"]
        hardened = container["securityContext"]
        assert hardened["readOnlyRootFilesystem"] is True
        assert hardened["allowPrivilegeEscalation"] is False
        assert hardened["capabilities"] == {"drop": ["ALL"]}
        # The root filesystem is read-only: /tmp must be a writable emptyDir.
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "emptyDir" in volumes[mounts[TMP]]
        assert {"cpu", "memory"} <= set(container["resources"]["requests"])
        assert {"cpu", "memory"} <= set(container["resources"]["limits"])


def _volume_of(rendered: Rendered, path: str) -> dict[str, Any]:
    mount = _mount_of(rendered.container, path)
    assert mount["readOnly"] is True
    assert "subPath" not in mount, "a subPath mount never sees a rotated Secret or ConfigMap"
    (volume,) = [v for v in rendered.pod["volumes"] if v["name"] == mount["name"]]
    return volume


def test_tls_switches_probes_to_https_and_mounts_the_secret(chart: helm.Chart) -> None:
    values = {"tls": {"enabled": True, "secretName": "broker-tls"}}
    tls = Rendered("tls", values, render(chart, values))
    config = tls.config
    cert, key = config["BROKER_TLS_CERT_FILE"], config["BROKER_TLS_KEY_FILE"]
    assert Path(cert).parent == Path(key).parent
    assert (Path(cert).name, Path(key).name) == ("tls.crt", "tls.key")  # kubernetes.io/tls
    volume = _volume_of(tls, cert)
    assert volume["secret"]["secretName"] == "broker-tls"
    assert "items" not in volume["secret"]
    for kind in ("startup", "liveness", "readiness"):
        assert tls.container[f"{kind}Probe"]["httpGet"]["scheme"] == "HTTPS"
    for service in tls.all("Service"):
        assert service["spec"]["ports"][0]["appProtocol"] == "https"
    # The migration job serves nothing: no certificate setting, no mount of the Secret.
    job = tls.job["spec"]["template"]["spec"]
    assert not {e["name"] for e in job["containers"][0]["env"]} & FILE_SETTINGS
    assert all("secret" not in v for v in job["volumes"])
    plain = _rendered("default")
    assert "BROKER_TLS_CERT_FILE" not in plain.config
    assert plain.container["readinessProbe"]["httpGet"]["scheme"] == "HTTP"
    with pytest.raises(helm.HelmError, match=r"tls\.secretName"):
        render(chart, {"tls": {"enabled": True}})


def test_ca_bundles_are_mounted_and_wired(chart: helm.Chart) -> None:
    values = {
        "vault": {"caCert": {"configMap": "", "secret": "vault-ca", "key": "vault.pem"}},
        "caBundle": {"configMap": "trust-bundle", "secret": "", "key": "bundle.pem"},
    }
    cas = Rendered("ca", values, render(chart, values))
    vault_ca = _volume_of(cas, cas.config["BROKER_VAULT_CACERT"])
    assert vault_ca["secret"]["secretName"] == "vault-ca"
    file_name = Path(cas.config["BROKER_VAULT_CACERT"]).name
    assert vault_ca["secret"]["items"] == [{"key": "vault.pem", "path": file_name}]
    bundle = _volume_of(cas, cas.config["BROKER_CA_BUNDLE"])
    assert bundle["configMap"]["name"] == "trust-bundle"
    file_name = Path(cas.config["BROKER_CA_BUNDLE"]).name
    assert bundle["configMap"]["items"] == [{"key": "bundle.pem", "path": file_name}]
    assert vault_ca["name"] != bundle["name"]
    for doc in cas.docs:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    both = {"caBundle": {"configMap": "a", "secret": "b", "key": "ca.crt"}}
    with pytest.raises(helm.HelmError, match="not both"):
        render(chart, both)


def test_grace_period_covers_the_drain(rendered: Rendered) -> None:
    """SIGTERM -> (preStop sleep) -> drainSeconds of serving -> shutdownTimeout -> exit, all
    before the kubelet's SIGKILL."""
    merged = rendered.merged
    needed = (
        merged["preStop"]["sleepSeconds"]
        + merged["config"]["drainSeconds"]
        + merged["config"]["shutdownTimeout"]
    )
    assert rendered.pod["terminationGracePeriodSeconds"] >= needed + 2
    assert float(rendered.config["BROKER_DRAIN_SECONDS"]) == merged["config"]["drainSeconds"]
    timeout = float(rendered.config["BROKER_SHUTDOWN_TIMEOUT"])
    assert timeout == merged["config"]["shutdownTimeout"]
    startup = merged["probes"]["startup"]
    prewarm = float(rendered.config["BROKER_PREWARM_SECONDS"])
    assert startup["periodSeconds"] * startup["failureThreshold"] >= prewarm + 30


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"terminationGracePeriodSeconds": 20},
            r"terminationGracePeriodSeconds \(20\) must be at least preStop\.sleepSeconds "
            r"\(0\) \+ config\.drainSeconds \(5\) \+ config\.shutdownTimeout \(20\) \+ 2 s = 27",
        ),
        (
            {"preStop": {"sleepSeconds": 10}},
            r"terminationGracePeriodSeconds \(30\) must be at least .* = 37",
        ),
        ({"config": {"drainSeconds": 5.5, "shutdownTimeout": 22.6}}, r"= 31: Kubernetes"),
        ({"config": {"prewarmSeconds": 40}}, r"probes\.startup allows 60 s"),
        ({"publicContainerPort": 8080}, r"publicContainerPort \(8080\) must differ"),
    ],
    ids=["grace", "prestop", "fractions", "prewarm", "same-port"],
)
def test_inconsistent_values_fail_with_their_reason(
    chart: helm.Chart, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm.HelmError, match=message):
        render(chart, values)


def test_prestop_sleep_only_when_asked(chart: helm.Chart) -> None:
    assert "lifecycle" not in _rendered("default").container
    values = {"preStop": {"sleepSeconds": 3}, "terminationGracePeriodSeconds": 31}
    slept = Rendered("prestop", values, render(chart, values))
    # Kubernetes' own sleep action: nothing to exec in the image.
    assert slept.container["lifecycle"] == {"preStop": {"sleep": {"seconds": 3}}}
    kubernetes_validate.validate(slept.deployment, KUBE_VERSION, strict=True)


def test_extra_volumes_and_affinity(chart: helm.Chart) -> None:
    node = {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["a"]}]}
            ]
        }
    }
    spread = {
        "preferredDuringSchedulingIgnoredDuringExecution": [
            {
                "weight": 1,
                "podAffinityTerm": {
                    "topologyKey": "kubernetes.io/hostname",
                    "labelSelector": {"matchLabels": {"app.kubernetes.io/component": "server"}},
                },
            }
        ]
    }
    values = {
        "extraVolumes": [{"name": "pg-ca", "secret": {"secretName": "pg-ca"}}],
        "extraVolumeMounts": [{"name": "pg-ca", "mountPath": "/etc/pg-ca", "readOnly": True}],
        "affinity": {"nodeAffinity": node, "podAntiAffinity": spread},
    }
    extra = Rendered("extra", values, render(chart, values))
    job = extra.job["spec"]["template"]["spec"]
    for pod in (extra.pod, job):
        assert {"name": "pg-ca", "secret": {"secretName": "pg-ca"}} in pod["volumes"]
        mounts = pod["containers"][0]["volumeMounts"]
        assert {"name": "pg-ca", "mountPath": "/etc/pg-ca", "readOnly": True} in mounts
    assert extra.pod["affinity"] == {"nodeAffinity": node, "podAntiAffinity": spread}
    # The job's pod is no server pod: anti-affinity written for those would misplace it.
    assert job["affinity"] == {"nodeAffinity": node}
    for doc in extra.docs:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def test_rollout_never_drops_below_the_replica_count(rendered: Rendered) -> None:
    spec = rendered.deployment["spec"]
    assert spec["strategy"]["type"] == "RollingUpdate"
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    constraints = rendered.pod["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in constraints} == {
        "topology.kubernetes.io/zone",
        "kubernetes.io/hostname",
    }
    for constraint in constraints:
        assert constraint["labelSelector"]["matchLabels"] == spec["selector"]["matchLabels"]


def _replicas(rendered: Rendered) -> int:
    hpas = rendered.all("HorizontalPodAutoscaler")
    if hpas:
        assert "replicas" not in rendered.deployment["spec"], "the HPA owns the replica count"
        return int(hpas[0]["spec"]["minReplicas"])
    return int(rendered.deployment["spec"]["replicas"])


def test_replicas_and_disruption_budget(rendered: Rendered) -> None:
    replicas = _replicas(rendered)
    assert replicas >= 2
    (pdb,) = rendered.all("PodDisruptionBudget")
    assert 0 < pdb["spec"]["minAvailable"] < replicas
    assert pdb["spec"]["selector"] == rendered.deployment["spec"]["selector"]


def test_probes_hit_the_routes_the_app_serves(rendered: Rendered) -> None:
    by_endpoint = {route.endpoint: route.path for route in health.routes}
    container = rendered.container
    probes = {
        kind: container[f"{kind}Probe"]["httpGet"] for kind in ("startup", "liveness", "readiness")
    }
    assert probes["liveness"]["path"] == by_endpoint[health.livez]
    assert probes["startup"]["path"] == by_endpoint[health.livez]
    assert probes["readiness"]["path"] == by_endpoint[health.readyz]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    scheme = "HTTPS" if rendered.merged["tls"]["enabled"] else "HTTP"
    for probe in probes.values():
        # Always the internal listener: the public one serves only /oauth/*.
        assert ports[probe["port"]] == int(rendered.config["BROKER_PORT"])
        assert probe["scheme"] == scheme
    assert rendered.config["BROKER_HOST"] == ALL_INTERFACES
    assert rendered.config["BROKER_PUBLIC_HOST"] == ALL_INTERFACES
    assert ports["public"] == int(rendered.config["BROKER_PUBLIC_PORT"]) != ports["http"]
    (service_port,) = rendered.service("server")["spec"]["ports"]
    assert ports[service_port["targetPort"]] == int(rendered.config["BROKER_PORT"])


def test_selectors_match_and_never_include_the_version(rendered: Rendered) -> None:
    deployment = rendered.deployment
    selector = deployment["spec"]["selector"]["matchLabels"]
    for service in rendered.all("Service"):
        assert service["spec"]["selector"] == selector
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert {k: pod_labels.get(k) for k in selector} == selector
    assert not {"helm.sh/chart", "app.kubernetes.io/version"} & set(selector)
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert not {chart["version"], chart["appVersion"]} & set(selector.values())
    # The migration job's pod must never receive the Service's traffic.
    job_labels = rendered.job["spec"]["template"]["metadata"]["labels"]
    assert {k: job_labels.get(k) for k in selector} != selector


def test_service_account_token_only_for_kubernetes_auth(rendered: Rendered) -> None:
    token_review = rendered.merged["workloadIdentity"]["tokenReview"]["enabled"]
    kubernetes_auth = rendered.merged["vault"]["auth"]["method"] == "kubernetes" or token_review
    assert rendered.pod["automountServiceAccountToken"] is kubernetes_auth
    for account in rendered.all("ServiceAccount"):
        assert account["automountServiceAccountToken"] is kubernetes_auth
        assert rendered.pod["serviceAccountName"] == account["metadata"]["name"]
    assert bool(rendered.all("ServiceAccount")) is rendered.merged["serviceAccount"]["create"]
    assert rendered.job["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


def test_token_review_binds_auth_delegator_and_configures_the_issuer(
    rendered: Rendered,
) -> None:
    wanted = rendered.merged["workloadIdentity"]
    bindings = rendered.all("ClusterRoleBinding")
    issuers = json.loads(rendered.config.get("BROKER_JWT_ISSUERS", "[]"))
    if wanted["tokenReview"]["enabled"]:
        (binding,) = bindings
        assert binding["roleRef"]["name"] == "system:auth-delegator"
        (subject,) = binding["subjects"]
        assert subject["name"] == rendered.pod["serviceAccountName"]
        review = issuers[0]
        assert review["tokenreview_url"] == "https://kubernetes.default.svc"
        assert review["token_file"].startswith("/var/run/secrets/kubernetes.io/serviceaccount/")
    else:
        assert bindings == []
        assert not any("tokenreview_url" in i for i in issuers)
    jwks = [i for i in issuers if "jwks_url" in i]
    assert [i["jwks_url"] for i in jwks] == [i["jwksUrl"] for i in wanted["jwksIssuers"]]


# --- settings ---------------------------------------------------------------------------------
def _secret_refs(env: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    return {
        e["name"]: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
        for e in env
        if "secretKeyRef" in e.get("valueFrom", {})
    }


def test_no_secret_in_any_configmap(rendered: Rendered) -> None:
    secrets = rendered.merged["secrets"]
    secret_values = [v for v in secrets.values() if v and isinstance(v, str)]
    secret_values = [v for v in secret_values if v != secrets["existingSecret"]]
    for configmap in rendered.all("ConfigMap"):
        data = configmap["data"]
        assert not SECRET_SETTINGS & set(data), "secret settings belong in a Secret"
        for value in secret_values:
            assert all(value not in v for v in data.values()), "a secret leaked into a ConfigMap"
    job_env = rendered.job["spec"]["template"]["spec"]["containers"][0]["env"]
    for env in (rendered.container["env"], job_env):
        for entry in env:
            if entry["name"] in SECRET_SETTINGS:
                assert "secretKeyRef" in entry["valueFrom"], entry["name"]


def test_secrets_come_from_the_right_secret(rendered: Rendered) -> None:
    existing = rendered.merged["secrets"]["existingSecret"]
    elsewhere = rendered.merged["secrets"]["valueFrom"]
    refs = _secret_refs(rendered.container["env"])
    assert {"BROKER_DATABASE_URL", "BROKER_REDIS_URL"} <= set(refs)
    assert set(refs) <= SECRET_SETTINGS
    assert ("BROKER_WEBHOOK_URLS" in refs) is rendered.merged["webhooks"]["enabled"]
    for name, source in elsewhere.items():
        assert refs.pop(name) == (source["secretKeyRef"]["name"], source["secretKeyRef"]["key"])
    assert all(key == name for name, (_, key) in refs.items())
    chart_secrets = {s["metadata"]["name"]: s for s in rendered.all("Secret")}
    if existing:
        assert not chart_secrets, "existingSecret set: the chart must not render a Secret"
        assert {secret for secret, _ in refs.values()} == {existing}
    else:
        (secret_name,) = {secret for secret, _ in refs.values()}
        assert set(chart_secrets[secret_name]["stringData"]) == set(refs)


def _mount_of(container: dict[str, Any], path: str) -> dict[str, Any]:
    """The volumeMount a file path lies in."""
    (mount,) = [
        m for m in container["volumeMounts"] if path.startswith(m["mountPath"].rstrip("/") + "/")
    ]
    return mount


def test_rendered_settings_are_accepted_by_the_app(rendered: Rendered, tmp_path: Path) -> None:
    """The ConfigMap plus the Secret keys form settings that load_settings accepts; every
    file a setting names lies in a read-only mount (a stand-in file is read here)."""
    secrets = {s["metadata"]["name"]: s.get("stringData", {}) for s in rendered.all("Secret")}
    env = dict(rendered.config)
    assert set(env) <= SETTINGS_KEYS, f"not settings: {set(env) - SETTINGS_KEYS}"
    for name, (secret, key) in _secret_refs(rendered.container["env"]).items():
        env[name] = secrets.get(secret, {}).get(key) or PLACEHOLDERS[name]
    stand_in = tmp_path / "file.pem"
    stand_in.write_text("stand-in")
    for name in FILE_SETTINGS & set(env):
        mount = _mount_of(rendered.container, env[name])
        assert mount["readOnly"] is True, name
        assert "subPath" not in mount, f"{name}: a subPath mount never sees a rotation"
        env[name] = str(stand_in)
    settings = load_settings(env)
    assert settings.port == rendered.container["ports"][0]["containerPort"]
    assert settings.vault_auth == rendered.merged["vault"]["auth"]["method"]
    assert settings.vault_transit_key == rendered.merged["vault"]["transitKey"]


# Settings the chart renders only when the values that need them are set; each must appear in
# some scenario (ci/full-values.yaml has them all) and never in the defaults.
CONDITIONAL_SETTINGS = {
    "BROKER_VAULT_ROLE_ID": "vault.auth.method approle",
    "BROKER_VAULT_CACERT": "vault.caCert",
    "BROKER_CA_BUNDLE": "caBundle",
    "BROKER_TLS_CERT_FILE": "tls.enabled",
    "BROKER_TLS_KEY_FILE": "tls.enabled",
    "BROKER_JWT_ISSUERS": "workloadIdentity",
}


def test_every_setting_is_reachable_from_the_chart() -> None:
    """Every field of broker.config.Settings can be set through the chart: rendered into the
    ConfigMap with the default values (HOST, PORT and PUBLIC_* set by the template itself),
    rendered once the feature needing it is on, or a secret setting read from a Secret (the
    chart's, an existing one, or secrets.valueFrom). Each is named in values.yaml."""
    values_text = (CHART / "values.yaml").read_text()
    schema = json.loads((CHART / "values.schema.json").read_text())
    value_from = set(schema["properties"]["secrets"]["properties"]["valueFrom"]["properties"])
    default = _rendered("default")
    rendered_config: set[str] = set()
    read_from_secrets: set[str] = set()
    for name in SCENARIOS:
        rendered_config |= set(_rendered(name).config)
        read_from_secrets |= set(_secret_refs(_rendered(name).container["env"]))
    assert set(CONDITIONAL_SETTINGS) <= SETTINGS_KEYS - SECRET_SETTINGS, "stale exceptions"
    problems = []
    for spec in dataclasses.fields(BrokerSettings):
        key = f"BROKER_{spec.name.upper()}"
        if key in SECRET_SETTINGS:
            if key not in read_from_secrets or key not in value_from:
                problems.append(f"{key}: a secret setting no scenario reads from a Secret")
        elif key in CONDITIONAL_SETTINGS:
            if key in default.config or key not in rendered_config:
                problems.append(f"{key}: should render only with {CONDITIONAL_SETTINGS[key]}")
        elif key not in default.config:
            problems.append(f"{key}: not in the ConfigMap rendered with the default values")
        if key not in values_text:
            problems.append(f"{key}: values.yaml never names it")
    assert problems == []


def test_configmap_holds_only_real_settings(rendered: Rendered) -> None:
    """No key the app does not know (a typo, or BROKER_CRASH_POINT, a fault-test hook that is
    no production setting) is rendered anywhere."""
    assert set(rendered.config) <= SETTINGS_KEYS
    assert "CRASH_POINT" not in json.dumps(rendered.docs)
    job_env = rendered.job["spec"]["template"]["spec"]["containers"][0]["env"]
    extra = {e["name"] for e in rendered.merged["extraEnv"]}
    for entry in (*rendered.container["env"], *job_env):
        if entry["name"].startswith("BROKER_") and entry["name"] not in extra:
            assert entry["name"] in SETTINGS_KEYS, entry["name"]


def test_secret_settings_from_value_from_reach_the_deployment(chart: helm.Chart) -> None:
    """secrets.valueFrom takes one secret setting from another Secret (left out of the
    chart's); extraEnv passes EnvVars with valueFrom through; extraEnvFrom adds sources."""
    pg = {"secretKeyRef": {"name": "broker-pg-app", "key": "uri"}}
    hook = {"secretKeyRef": {"name": "webhook-creds", "key": "urls", "optional": False}}
    docs = _with_webhooks_and_token(
        chart,
        "value-from",
        {
            "redisUrl": "redis://redis:6379/0",
            "vaultToken": "token-canary",
            "webhookSecret": "whsec_" + "c" * 40,
            "valueFrom": {"BROKER_DATABASE_URL": pg, "BROKER_WEBHOOK_URLS": hook},
        },
        {
            "extraEnv": [
                {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {
                    "name": "HTTPS_PROXY",
                    "valueFrom": {"secretKeyRef": {"name": "proxy", "key": "url"}},
                },
            ],
            "extraEnvFrom": [{"configMapRef": {"name": "proxy-env"}}],
        },
    )
    env = {e["name"]: e for e in docs.container["env"]}
    assert env["BROKER_DATABASE_URL"]["valueFrom"] == pg
    assert env["BROKER_WEBHOOK_URLS"]["valueFrom"] == hook
    chart_secret = docs.deployment["metadata"]["name"]
    for name in ("BROKER_REDIS_URL", "BROKER_VAULT_TOKEN", "BROKER_WEBHOOK_SECRET"):
        assert env[name]["valueFrom"] == {"secretKeyRef": {"name": chart_secret, "key": name}}
    assert env["POD_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env["HTTPS_PROXY"]["valueFrom"]["secretKeyRef"] == {"name": "proxy", "key": "url"}
    assert {"configMapRef": {"name": "proxy-env"}} in docs.container["envFrom"]
    # The chart's Secret (and the hook's copy) hold only what does not come from elsewhere.
    for secret in docs.all("Secret"):
        assert set(secret["stringData"]) == {
            "BROKER_REDIS_URL",
            "BROKER_VAULT_TOKEN",
            "BROKER_WEBHOOK_SECRET",
        }
    job_env = {e["name"]: e for e in docs.job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert job_env["BROKER_DATABASE_URL"]["valueFrom"] == pg
    assert job_env["POD_IP"] == env["POD_IP"]
    for doc in docs.docs:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def test_extra_env_cannot_shadow_a_secret_setting(chart: helm.Chart) -> None:
    shadow = {"name": "BROKER_REDIS_URL", "value": "redis://elsewhere:6379/0"}
    with pytest.raises(helm.HelmError, match=r"secrets\.valueFrom\.BROKER_REDIS_URL"):
        render(chart, {"extraEnv": [shadow]})


def test_migration_job_is_a_hook_with_the_same_pod(rendered: Rendered) -> None:
    job = rendered.job
    annotations = job["metadata"]["annotations"]
    assert set(annotations["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["migrate"]
    assert container["image"] == rendered.container["image"]
    assert container["securityContext"] == rendered.container["securityContext"]
    assert pod["securityContext"] == rendered.pod["securityContext"]
    # The ConfigMap does not exist yet when a pre-install hook runs: the same data, inline,
    # but for the server's own files (migrate reads no certificate) and what extraEnv sets.
    names = [e["name"] for e in container["env"]]
    assert len(names) == len(set(names)), "duplicate env names"
    extra = rendered.merged["extraEnv"]
    assert all(e in container["env"] for e in extra)
    extra_names = {e["name"] for e in extra}
    inline = {
        e["name"]: e["value"]
        for e in container["env"]
        if e["name"] not in extra_names | SECRET_SETTINGS
    }
    wanted = {k: v for k, v in rendered.config.items() if k not in FILE_SETTINGS | extra_names}
    assert inline == wanted
    assert container.get("envFrom", []) == rendered.merged["extraEnvFrom"]
    assert [v["name"] for v in pod["volumes"]] == [
        "tmp",
        *(v["name"] for v in rendered.merged["extraVolumes"]),
    ]
    job_refs = _secret_refs(container["env"])
    server_refs = _secret_refs(rendered.container["env"])
    assert {n: key for n, (_, key) in job_refs.items()} == {
        n: key for n, (_, key) in server_refs.items()
    }
    for name in rendered.merged["secrets"]["valueFrom"]:  # the same Secret, whatever the hook
        assert job_refs.pop(name) == server_refs[name]
    (secret_name,) = {secret for secret, _ in job_refs.values()}
    existing = rendered.merged["secrets"]["existingSecret"]
    if existing:
        assert secret_name == existing
    else:
        hook_secret = next(
            s for s in rendered.all("Secret") if s["metadata"]["name"] == secret_name
        )
        hook = hook_secret["metadata"]["annotations"]
        assert "pre-install" in hook["helm.sh/hook"]
        assert int(hook["helm.sh/hook-weight"]) < int(annotations["helm.sh/hook-weight"])


# --- optional resources -----------------------------------------------------------------------
def test_monitoring_resources(rendered: Rendered) -> None:
    monitors = rendered.all("ServiceMonitor")
    rules = rendered.all("PrometheusRule")
    assert bool(monitors) is rendered.merged["serviceMonitor"]["enabled"]
    assert bool(rules) is rendered.merged["prometheusRule"]["enabled"]
    service = rendered.service("server")
    public = rendered.service("public")
    route_paths = {route.path for route in health.routes}
    for monitor in monitors:
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        selector = monitor["spec"]["selector"]["matchLabels"]
        labels = service["metadata"]["labels"]
        assert {k: labels.get(k) for k in selector} == selector
        public_labels = public["metadata"]["labels"]
        assert {k: public_labels.get(k) for k in selector} != selector, "scrapes the public one"
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["port"] == service["spec"]["ports"][0]["name"]
        assert endpoint["path"] == "/metrics"
        if rendered.merged["tls"]["enabled"]:
            assert endpoint["scheme"] == "https"
            assert endpoint.get("tlsConfig", {}) == rendered.merged["serviceMonitor"]["tlsConfig"]
        else:
            assert "scheme" not in endpoint
        assert endpoint["path"] in route_paths
        assert (
            rendered.merged["serviceMonitor"]["labels"].items()
            <= monitor["metadata"]["labels"].items()
        )
    alerts = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yaml").read_text())
    for rule in rules:
        assert rule["apiVersion"] == "monitoring.coreos.com/v1"
        assert rule["spec"] == {"groups": alerts["groups"]}


def test_public_service_exposes_only_the_public_port(rendered: Rendered) -> None:
    public = rendered.service("public")
    (port,) = public["spec"]["ports"]
    ports = {p["name"]: p["containerPort"] for p in rendered.container["ports"]}
    assert ports[port["targetPort"]] == int(rendered.config["BROKER_PUBLIC_PORT"])
    assert port["port"] == rendered.merged["publicService"]["port"]
    assert public["spec"]["type"] == rendered.merged["publicService"]["type"]
    (internal,) = rendered.service("server")["spec"]["ports"]
    assert ports[internal["targetPort"]] == int(rendered.config["BROKER_PORT"])
    assert public["metadata"]["name"] != rendered.service("server")["metadata"]["name"]


def test_ingress_routes_only_to_the_public_service(rendered: Rendered) -> None:
    ingresses = rendered.all("Ingress")
    wanted = rendered.merged["ingress"]
    assert bool(ingresses) is wanted["enabled"]
    public = rendered.service("public")
    for ingress in ingresses:
        spec = ingress["spec"]
        assert "defaultBackend" not in spec
        assert [rule["host"] for rule in spec["rules"]] == wanted["hosts"]
        for rule in spec["rules"]:
            paths = rule["http"]["paths"]
            assert [(p["path"], p["pathType"]) for p in paths] == [
                (p["path"], p["pathType"]) for p in wanted["paths"]
            ]
            for path in paths:
                backend = path["backend"]["service"]
                assert backend["name"] == public["metadata"]["name"]
                assert backend["port"] == {"name": public["spec"]["ports"][0]["name"]}
        assert spec.get("tls", []) == wanted["tls"]
        assert spec.get("ingressClassName", "") == wanted["className"]
        assert wanted["annotations"].items() <= ingress["metadata"].get("annotations", {}).items()


def test_ingress_needs_a_host(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmError, match=r"ingress\.hosts"):
        render(chart, {"ingress": {"enabled": True}})
    values = {"ingress": {"enabled": True, "hosts": ["install.example.com"]}}
    (ingress,) = Rendered("ingress", values, render(chart, values)).all("Ingress")
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "install.example.com"
    assert [p["path"] for p in rule["http"]["paths"]] == ["/oauth"]


def test_chart_alerts_are_a_copy_of_deploy_alerts() -> None:
    copy = CHART / "files" / "alerts.yaml"
    assert copy.read_bytes() == (ROOT / "deploy" / "prometheus" / "alerts.yaml").read_bytes()


def test_network_policy(rendered: Rendered) -> None:
    policies = rendered.all("NetworkPolicy")
    assert bool(policies) is rendered.merged["networkPolicy"]["enabled"]
    for policy in policies:
        spec = policy["spec"]
        selector = spec["podSelector"]["matchLabels"]
        for pod_labels in (
            rendered.deployment["spec"]["template"]["metadata"]["labels"],
            rendered.job["spec"]["template"]["metadata"]["labels"],
        ):
            assert {k: pod_labels.get(k) for k in selector} == selector
        assert set(spec["policyTypes"]) == {"Ingress", "Egress"}
        internal = {"port": int(rendered.config["BROKER_PORT"]), "protocol": "TCP"}
        public = {"port": int(rendered.config["BROKER_PUBLIC_PORT"]), "protocol": "TCP"}
        peers = {
            json.dumps(internal): rendered.merged["networkPolicy"]["allowedClients"],
            json.dumps(public): rendered.merged["networkPolicy"]["ingressControllers"],
        }
        for rule in spec["ingress"]:
            assert rule["from"], "an ingress rule without `from` would admit everyone"
            (port,) = rule["ports"]  # one port per rule: never both to the same peers
            assert len(rule["from"]) == len(peers[json.dumps(port)])
        egress = {(p["port"], p["protocol"]) for rule in spec["egress"] for p in rule["ports"]}
        backends = rendered.merged["networkPolicy"]["egress"]
        for backend in ("postgres", "redis", "vault", "hubspot"):
            assert (backends[backend]["port"], "TCP") in egress
        assert {(53, "UDP"), (53, "TCP")} <= egress


def _egress_rules(policy: dict[str, Any]) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = policy["spec"]["egress"]
    return rules


def test_network_policy_opens_egress_for_the_features_that_are_on(chart: helm.Chart) -> None:
    base: dict[str, Any] = {
        "networkPolicy": {
            "enabled": True,
            "egress": {
                "postgres": {"port": 5432, "cidrs": ["10.1.0.0/24"], "peers": []},
                "redis": {"port": 6379, "cidrs": ["10.1.1.0/24"], "peers": []},
                "vault": {"port": 8200, "cidrs": ["10.1.2.0/24"], "peers": []},
                "kubernetesApi": {"cidrs": ["172.20.0.1/32"], "ports": [443, 6443]},
                "webhooks": {
                    "ports": [443, 9443],
                    "ipBlocks": [{"cidr": "198.51.100.0/24"}],
                    "peers": [{"namespaceLabels": {"kubernetes.io/metadata.name": "audit"}}],
                },
            },
        }
    }
    (off,) = Rendered("off", base, render(chart, base)).all("NetworkPolicy")
    on_values = {
        **base,
        "webhooks": {"enabled": True},
        "workloadIdentity": {
            "tokenReview": {"enabled": True},
            "jwksIssuers": [
                {"issuer": "https://ci.example.com", "audience": "htb", "jwksUrl": "https://x/j"}
            ],
        },
    }
    (on,) = Rendered("on", on_values, render(chart, on_values)).all("NetworkPolicy")
    # The same rules, with three more before the last one (DNS).
    before, dns = _egress_rules(off)[:-1], _egress_rules(off)[-1]
    assert _egress_rules(on)[: len(before)] == before
    assert _egress_rules(on)[-1] == dns
    webhooks, jwks, api_server = _egress_rules(on)[len(before) : -1]
    assert webhooks["to"] == [
        {"ipBlock": {"cidr": "198.51.100.0/24"}},
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "audit"}}},
    ]
    assert webhooks["ports"] == [
        {"port": 443, "protocol": "TCP"},
        {"port": 9443, "protocol": "TCP"},
    ]
    # The default JWKS rule: any public address on 443.
    assert jwks["to"] == [
        {
            "ipBlock": {
                "cidr": "0.0.0.0/0",
                "except": ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"],
            }
        }
    ]
    assert jwks["ports"] == [{"port": 443, "protocol": "TCP"}]
    # TokenReview: the API server's endpoint address, not a selector.
    assert api_server["to"] == [{"ipBlock": {"cidr": "172.20.0.1/32"}}]
    assert api_server["ports"] == [
        {"port": 443, "protocol": "TCP"},
        {"port": 6443, "protocol": "TCP"},
    ]
    kubernetes_validate.validate(on, KUBE_VERSION, strict=True)


def test_network_policy_splits_ingress_by_port(chart: helm.Chart) -> None:
    billing = {"namespaceLabels": {"kubernetes.io/metadata.name": "billing"}}
    controller = {"namespaceLabels": {"kubernetes.io/metadata.name": "edge"}}
    values = {
        "networkPolicy": {
            "enabled": True,
            "allowedClients": [billing],
            "ingressControllers": [controller],
            "egress": {
                name: {"port": port, "cidrs": ["10.0.0.0/8"], "peers": []}
                for name, port in (("postgres", 5432), ("redis", 6379), ("vault", 8200))
            },
        }
    }
    (policy,) = Rendered("split", values, render(chart, values)).all("NetworkPolicy")
    internal, public = policy["spec"]["ingress"]
    assert internal["ports"] == [{"port": 8080, "protocol": "TCP"}]
    assert internal["from"] == [{"namespaceSelector": {"matchLabels": billing["namespaceLabels"]}}]
    assert public["ports"] == [{"port": 8081, "protocol": "TCP"}]
    assert public["from"] == [{"namespaceSelector": {"matchLabels": controller["namespaceLabels"]}}]
    values["networkPolicy"]["allowedClients"] = []
    values["networkPolicy"]["ingressControllers"] = []
    (closed,) = Rendered("closed", values, render(chart, values)).all("NetworkPolicy")
    assert closed["spec"]["ingress"] == []


def test_token_review_needs_the_api_server_addresses(chart: helm.Chart) -> None:
    backends = {
        name: {"port": port, "cidrs": ["10.0.0.0/8"], "peers": []}
        for name, port in (("postgres", 5432), ("redis", 6379), ("vault", 8200))
    }
    values = {
        "networkPolicy": {"enabled": True, "egress": backends},
        "workloadIdentity": {"tokenReview": {"enabled": True}},
    }
    with pytest.raises(helm.HelmError, match=r"networkPolicy\.egress\.kubernetesApi\.cidrs"):
        render(chart, values)


def test_network_policy_refuses_to_cut_off_a_backend(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmError, match=r"networkPolicy\.egress\.postgres"):
        render(chart, {"networkPolicy": {"enabled": True}})


def test_disruption_budget_must_stay_below_replicas(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmError, match="minAvailable"):
        render(chart, {"replicaCount": 2, "podDisruptionBudget": {"minAvailable": 2}})


# --- values and schema ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "values",
    [
        {"replicaCuont": 3},
        {"image": {"tga": "1.0"}},
        {"networkPolicy": {"egress": {"vault": {"cidr": ["10.0.0.0/8"]}}}},
        {"securityContext": {"readOnlyRootFilesystem": False}},
        {"vault": {"auth": {"method": "userpass"}}},
        {"replicaCount": 1},
        {"extraVolumes": [{"name": "host", "hostPath": {"path": "/"}}]},
        {"extraEnv": [{"name": "A", "value": "1", "valueFrom": {"fieldRef": {"fieldPath": "x"}}}]},
        {"secrets": {"valueFrom": {"BROKER_DATABASE_URL": {"configMapKeyRef": {"name": "a"}}}}},
        {"secrets": {"valueFrom": {"BROKER_VAULT_ADDR": {"secretKeyRef": {"name": "a"}}}}},
        {"config": {"trustedProxies": "10.0.0.0/8"}},
    ],
    ids=[
        "unknown-top-level",
        "unknown-nested",
        "unknown-deep",
        "weakened",
        "bad-enum",
        "one",
        "host-path",
        "value-and-value-from",
        "secret-in-configmap",
        "not-a-secret-setting",
        "proxies-not-a-list",
    ],
)
def test_schema_rejects_bad_values(chart: helm.Chart, values: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmValuesError, match="schema"):
        render(chart, values)


def _closed(schema: dict[str, Any], definitions: dict[str, Any], where: str) -> Iterator[str]:
    """Paths of object schemas that do not close their keys."""
    if "$ref" in schema:
        return
    if schema.get("type") == "object":
        extra = schema.get("additionalProperties")
        if "properties" in schema and extra is not False:
            yield where
        if "properties" not in schema and not isinstance(extra, dict):
            yield where  # a free-form map must still say what its values are
    for key, sub in schema.get("properties", {}).items():
        yield from _closed(sub, definitions, f"{where}.{key}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            yield from _closed(schema[key], definitions, f"{where}[]")


# Kubernetes' own types the chart passes through (a volume source, an affinity term): its
# schema is Kubernetes', which test_manifests_are_valid_kubernetes applies strictly to every
# rendered manifest; copying it here would only drift. Every use is behind a closed object
# that names which Kubernetes type goes there.
PASS_THROUGH = {"kubernetesObject"}


def test_schema_closes_every_object() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    definitions = schema["definitions"]
    open_objects = list(_closed(schema, definitions, "$"))
    for name, definition in definitions.items():
        if name not in PASS_THROUGH:
            open_objects += _closed(definition, definitions, f"#/definitions/{name}")
    assert open_objects == []
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(schema["properties"]) == set(values)


def _undocumented(
    node: yaml.Node, schema: dict[str, Any], definitions: dict[str, Any], lines: list[str]
) -> Iterator[str]:
    """Keys of values.yaml that the schema defines and no comment explains."""
    if "$ref" in schema:
        schema = definitions[schema["$ref"].rsplit("/", 1)[1]]
    if not isinstance(node, yaml.MappingNode) or "properties" not in schema:
        return  # a scalar, a list, or a free-form map (its entries are data, not settings)
    for key, value in node.value:
        line = key.start_mark.line
        above = lines[line - 1].strip() if line else ""
        if not (above.startswith("#") or " # " in lines[line]):
            yield key.value
        yield from _undocumented(value, schema["properties"][key.value], definitions, lines)


def test_schema_value_from_names_exactly_the_secret_settings() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    value_from = schema["properties"]["secrets"]["properties"]["valueFrom"]
    assert set(value_from["properties"]) == SECRET_SETTINGS


def test_every_value_is_documented() -> None:
    text = (CHART / "values.yaml").read_text()
    schema = json.loads((CHART / "values.schema.json").read_text())
    root = yaml.compose(text)
    assert root is not None
    found = list(_undocumented(root, schema, schema["definitions"], text.splitlines()))
    assert found == [], f"values.yaml keys without a comment: {found}"


def test_secret_settings_can_be_mounted_as_files(chart: helm.Chart) -> None:
    """secrets.files: the setting comes from a mounted Secret (read-only, no subPath, so a
    rotation reaches the pod and the broker re-reads the file), never from the environment
    or the chart's Secret."""
    files = {
        "BROKER_VAULT_TOKEN": {"secretName": "vault-token", "key": "token"},
        "BROKER_WEBHOOK_SECRET": {"secretName": "webhook-secrets", "key": "whsec"},
        "BROKER_DATABASE_URL": {"secretName": "broker-pg-app", "key": "uri"},
    }
    docs = _with_webhooks_and_token(
        chart,
        "files",
        {
            "redisUrl": "redis://redis:6379/0",
            "webhookUrls": "https://receiver.example.com/hook",
            "files": files,
        },
    )
    for pod in (docs.deployment, docs.job):
        spec = pod["spec"]["template"]["spec"]
        container = spec["containers"][0]
        env = {e["name"]: e for e in container["env"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        for name, ref in files.items():
            assert name not in env
            path = env[f"{name}_FILE"]["value"]
            directory, _, leaf = path.rpartition("/")
            assert leaf == "value"
            mount = mounts[directory]
            assert mount["readOnly"] is True
            assert "subPath" not in mount
            secret = volumes[mount["name"]]["secret"]
            assert secret["secretName"] == ref["secretName"]
            assert secret["items"] == [{"key": ref["key"], "path": "value"}]
        assert "BROKER_REDIS_URL" in env  # the others still come from the chart's Secret
    for secret in docs.all("Secret"):
        assert set(secret["stringData"]) == {"BROKER_REDIS_URL", "BROKER_WEBHOOK_URLS"}
    for doc in docs.docs:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def _with_webhooks_and_token(
    chart: helm.Chart, name: str, secrets: dict[str, Any], more: dict[str, Any] | None = None
) -> Rendered:
    """The chart rendered with token auth, webhooks on and these ``secrets`` values."""
    values = {
        "vault": {"auth": {"method": "token"}},
        "webhooks": {"enabled": True},
        "secrets": secrets,
        **(more or {}),
    }
    return Rendered(name, {}, render(chart, values))
