"""deploy/k8s renders, validates offline and agrees with the code (topics, groups, settings, probes)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from yamllint import linter
from yamllint.config import YamlLintConfig

from consumers.cli import parser
from consumers.settings import LIBRDKAFKA_PREFIX, Settings
from consumers.topics import topic_specs
from devstack import manifests

from .crd_schemas import SCHEMAS
from .kustomize import Doc, kubectl_render, render, rendered

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
OVERLAYS = ["base", "overlays/dev", "overlays/prod", "overlays/prod-scram"]
YAMLLINT = Path(__file__).resolve().parents[2] / "deploy" / ".yamllint.yaml"

_cache: dict[str, list[Doc]] = {}


def docs(overlay: str) -> list[Doc]:
    if overlay not in _cache:
        _cache[overlay] = rendered(K8S / overlay)[1]
    return _cache[overlay]


def of_kind(overlay: str, kind: str) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in docs(overlay) if d["kind"] == kind}


def container(deployment: Doc) -> dict[str, Any]:
    return dict(deployment["spec"]["template"]["spec"]["containers"][0])


def test_generated_manifests_are_up_to_date() -> None:
    stale = [str(p.relative_to(K8S)) for p in manifests.stale()]
    assert stale == [], f"out of date: {stale}; run `make manifests` (python -m devstack.manifests)"


@pytest.mark.skipif(not shutil.which("kubectl"), reason="kubectl absent: the fallback renderer is used alone")
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_fallback_renderer_agrees_with_kubectl(overlay: str) -> None:
    def key(d: Doc) -> tuple[str, str, str]:
        return d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"]

    ours = {key(d): d for d in render(K8S / overlay)}
    theirs = {key(d): d for d in kubectl_render(K8S / overlay)}
    assert ours == theirs


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_builtin_kinds_pass_kubernetes_validate_strict(overlay: str) -> None:
    version = kubernetes_validate.latest_version()
    checked = 0
    for doc in docs(overlay):
        if (doc["apiVersion"], doc["kind"]) in SCHEMAS:
            continue
        kubernetes_validate.validate(doc, version, strict=True)  # raises ValidationError
        checked += 1
    assert checked >= 20


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_custom_resources_fit_their_structural_schemas(overlay: str) -> None:
    kinds = set()
    for doc in docs(overlay):
        schema = SCHEMAS.get((doc["apiVersion"], doc["kind"]))
        if schema is not None:
            jsonschema.validate(doc, schema)
            kinds.add(doc["kind"])
    expected = {"KafkaTopic", "ScaledObject", "PodMonitor", "PrometheusRule"}
    assert kinds == (expected | {"TriggerAuthentication"} if overlay == "overlays/prod-scram" else expected)


def test_kubernetes_validate_and_the_crd_schemas_reject_mistakes() -> None:
    deployment = next(iter(of_kind("base", "Deployment").values()))
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)
    scaler = next(iter(of_kind("base", "ScaledObject").values()))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**scaler, "spec": {**scaler["spec"], "maxReplicas": 3}},
                            SCHEMAS[("keda.sh/v1alpha1", "ScaledObject")])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_output_passes_yamllint(overlay: str) -> None:
    text = yaml.safe_dump_all(docs(overlay), sort_keys=False, width=120, explicit_start=True)
    # Alert expressions and annotations stay one line each (as in prometheusrule.yaml).
    config = yaml.safe_load(YAMLLINT.read_text())
    config["rules"]["line-length"] = "disable"
    problems = [f"{p.line}:{p.column} {p.message}"
                for p in linter.run(text, YamlLintConfig(content=yaml.safe_dump(config)))]
    assert problems == []


def test_deploy_sources_pass_yamllint() -> None:
    config = YamlLintConfig(file=str(YAMLLINT))
    files = sorted(p for ext in ("*.yaml", "*.yml") for p in K8S.parent.rglob(ext))
    assert len(files) >= 15
    problems = [f"{f.relative_to(K8S.parent)}:{p.line}: {p.message}"
                for f in files for p in linter.run(f.read_text(), config, str(f))]
    assert problems == []


def test_every_topic_has_a_kafka_topic_and_dead_letters_keep_longer() -> None:
    settings = manifests.default_settings()
    expected = {s.name: s.retention_ms for s in topic_specs(settings, manifests.channels())}
    for overlay in OVERLAYS:
        topics = {d["spec"]["topicName"]: d for d in of_kind(overlay, "KafkaTopic").values()}
        assert set(topics) == set(expected), overlay
        for name, doc in topics.items():
            assert doc["spec"]["config"]["retention.ms"] == expected[name]
            assert doc["metadata"]["labels"]["strimzi.io/cluster"] == manifests.STRIMZI_CLUSTER
        longest_other = max(v for k, v in expected.items() if not k.endswith(".dlq"))
        assert all(v > longest_other for k, v in expected.items() if k.endswith(".dlq"))
    assert all(d["spec"]["replicas"] == 1 for d in of_kind("overlays/dev", "KafkaTopic").values())
    assert all(d["spec"]["replicas"] == 3 for d in of_kind("overlays/prod", "KafkaTopic").values())


def test_one_deployment_per_consumer_group_with_a_known_command() -> None:
    settings = Settings()
    for overlay in OVERLAYS:
        deployments = of_kind(overlay, "Deployment")
        groups = {}
        for name, d in deployments.items():
            if d["metadata"]["labels"].get("app.kubernetes.io/name") != "tidings":
                continue
            args = container(d)["args"]
            parser().parse_args(args)
            role = role_of(args)
            assert name == f"tidings-{role}"
            groups[role] = name
        channels = set(manifests.channels())
        assert {"email", "webhook", "slack", "discord", "telegram", "teams", "sms", "inapp"} <= channels
        assert set(groups) == {"router"} | {f"deliver-{c}{s}" for c in channels for s in ("", "-urgent")}, overlay
        assert "tidings-router" in groups.values() and settings.group("router") == "tidings-router"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_grace_period_resources_and_security(overlay: str) -> None:
    settings_map = of_kind(overlay, "ConfigMap")["tidings-settings"]["data"]
    shutdown = float(settings_map["TIDINGS_SHUTDOWN_TIMEOUT"])
    poll = float(settings_map.get("TIDINGS_POLL_TIMEOUT", Settings.model_fields["poll_timeout"].default))
    for name, d in of_kind(overlay, "Deployment").items():
        pod = d["spec"]["template"]["spec"]
        c = pod["containers"][0]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert c["securityContext"]["allowPrivilegeEscalation"] is False, name
        assert c["resources"]["requests"] and c["resources"]["limits"]["memory"], name
        if d["metadata"]["labels"].get("app.kubernetes.io/name") != "tidings":
            continue
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports == {"metrics": int(settings_map["TIDINGS_METRICS_PORT"])}
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
        # the drain: shutdown timeout plus a batch in flight, with room to spare
        assert pod["terminationGracePeriodSeconds"] >= shutdown + poll + 30, name
        assert "replicas" not in d["spec"], f"{name}: the ScaledObject owns the replica count"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_group_scales_on_its_lag_within_its_partitions(overlay: str) -> None:
    deployments = {n for n, d in of_kind(overlay, "Deployment").items()
                   if d["metadata"]["labels"].get("app.kubernetes.io/name") == "tidings"}
    topics = {d["spec"]["topicName"]: d["spec"]["partitions"] for d in of_kind(overlay, "KafkaTopic").values()}
    scalers = of_kind(overlay, "ScaledObject")
    assert {s["spec"]["scaleTargetRef"]["name"] for s in scalers.values()} == deployments
    settings = manifests.default_settings()
    for name, s in scalers.items():
        spec = s["spec"]
        trigger = spec["triggers"][0]["metadata"]
        args = container(of_kind(overlay, "Deployment")[spec["scaleTargetRef"]["name"]])["args"]
        role = role_of(args)
        assert trigger["consumerGroup"] == settings.group(role)
        assert trigger["topic"] == (settings.input_topic if role == "router"
                                    else settings.deliver_topic(args[1], args[args.index("--lane") + 1]))
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= topics[trigger["topic"]], name
        assert trigger["bootstrapServers"] == of_kind(overlay, "ConfigMap")["tidings-settings"]["data"][
            "TIDINGS_KAFKA_BOOTSTRAP"]


def role_of(args: list[str]) -> str:
    """The consumer group role a Deployment's arguments give: router, deliver-<channel>[-urgent]."""
    parsed = parser().parse_args(args)
    if parsed.command == "router":
        return "router"
    assert parsed.lane in ("normal", "urgent"), f"{args}: a Deployment reads one lane"
    return f"deliver-{parsed.channel}" + ("-urgent" if parsed.lane == "urgent" else "")


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_budgets_monitors_and_policies_select_the_consumers(overlay: str) -> None:
    deployments = {n: d for n, d in of_kind(overlay, "Deployment").items()
                   if d["metadata"]["labels"].get("app.kubernetes.io/name") == "tidings"}
    budgets = of_kind(overlay, "PodDisruptionBudget")
    monitor = of_kind(overlay, "PodMonitor")["tidings"]
    policy = of_kind(overlay, "NetworkPolicy")["tidings-consumers"]
    for name, d in deployments.items():
        pod_labels = d["spec"]["template"]["metadata"]["labels"]
        assert _selects(d["spec"]["selector"]["matchLabels"], pod_labels)
        covering = [b for b in budgets.values() if _selects(b["spec"]["selector"]["matchLabels"], pod_labels)]
        assert len(covering) == 1 and covering[0]["spec"]["maxUnavailable"] == 1, name
        assert _selects(monitor["spec"]["selector"]["matchLabels"], pod_labels), name
        assert _selects(policy["spec"]["podSelector"]["matchLabels"], pod_labels), name
    endpoint = monitor["spec"]["podMetricsEndpoints"][0]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    relabel = {r["targetLabel"]: r for r in endpoint["relabelings"]}
    assert relabel["job"]["replacement"] == "tidings"  # what deploy/prometheus/alerts.yml selects
    assert relabel["component"]["sourceLabels"] == ["__meta_kubernetes_pod_label_app_kubernetes_io_component"]
    ingress_ports = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert ingress_ports == {"metrics"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_settings_and_secret_references_name_real_settings(overlay: str) -> None:
    fields = {f"TIDINGS_{n.upper()}" for n in Settings.model_fields}
    for key in of_kind(overlay, "ConfigMap")["tidings-settings"]["data"]:
        assert key in fields or key.startswith(LIBRDKAFKA_PREFIX), f"{key} is not a setting"
    secrets = of_kind(overlay, "Secret")
    for d in of_kind(overlay, "Deployment").values():
        c = container(d)
        for env in c.get("env", []):
            assert env["name"] in fields
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref and ref["name"] in secrets:
                data = secrets[ref["name"]].get("stringData", {})
                assert ref["key"] in data
        for source in c.get("envFrom", []):
            ref = source.get("secretRef")
            if ref and ref["name"] in secrets:
                for key in secrets[ref["name"]].get("stringData", {}):
                    assert key in fields, f"secret {ref['name']}: {key} is not a setting"
    if overlay == "overlays/dev":
        assert "tidings-redis" in secrets  # dev brings its own; prod expects it from a secret store
    for secret in secrets.values():
        assert "data" not in secret or not secret["data"]  # plain text only where it is meant to be


def test_the_router_mounts_rules_and_every_template() -> None:
    router = of_kind("overlays/prod", "Deployment")["tidings-router"]
    pod = router["spec"]["template"]["spec"]
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "config")
    assert mount["mountPath"] == "/app/config"
    settings_map = of_kind("overlays/prod", "ConfigMap")["tidings-settings"]["data"]
    assert settings_map["TIDINGS_RULES"] == "/app/config/rules.yaml"
    items = next(v for v in pod["volumes"] if v["name"] == "config")["configMap"]["items"]
    config = of_kind("overlays/prod", "ConfigMap")["tidings-config"]["data"]
    repo_config = K8S.parents[1] / "config"
    for item in items:
        assert config[item["key"]] == (repo_config / item["path"]).read_text()
    on_disk = {str(p.relative_to(repo_config)) for p in (repo_config / "templates").rglob("*") if p.is_file()}
    assert on_disk <= {i["path"] for i in items}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_inbox_api_is_served_probed_and_reachable(overlay: str) -> None:
    inbox = of_kind(overlay, "Deployment")["tidings-inbox"]
    c = container(inbox)
    args = parser().parse_args(c["args"])
    assert (args.command, args.action, args.host) == ("inbox", "serve", "0.0.0.0")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": args.port, "metrics": Settings().metrics_port}
    assert c["livenessProbe"]["httpGet"] == c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    secret_refs = [s["secretRef"] for s in c["envFrom"] if "secretRef" in s]
    assert secret_refs == [{"name": "tidings-inbox"}]  # required: the API refuses to start without its key
    pod_labels = inbox["spec"]["template"]["metadata"]["labels"]
    service = of_kind(overlay, "Service")["tidings-inbox"]
    assert _selects(service["spec"]["selector"], pod_labels)
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    budget = of_kind(overlay, "PodDisruptionBudget")["tidings-inbox"]
    assert _selects(budget["spec"]["selector"]["matchLabels"], pod_labels)
    assert inbox["spec"]["replicas"] > budget["spec"]["maxUnavailable"]
    redis_policy = of_kind(overlay, "NetworkPolicy")["tidings-redis"]
    allowed = [peer["podSelector"]["matchLabels"] for rule in redis_policy["spec"]["ingress"] for peer in rule["from"]]
    assert any(_selects(sel, pod_labels) for sel in allowed), "the inbox API cannot reach Redis"
    # scraped on its metrics port (the live-stream gauges), which its policy lets in
    monitor = of_kind(overlay, "PodMonitor")["tidings-inbox"]
    assert _selects(monitor["spec"]["selector"]["matchLabels"], pod_labels)
    assert [(e["port"], e["path"]) for e in monitor["spec"]["podMetricsEndpoints"]] == [("metrics", "/metrics")]
    inbox_policy = of_kind(overlay, "NetworkPolicy")["tidings-inbox"]
    assert {p["port"] for rule in inbox_policy["spec"]["ingress"] for p in rule["ports"]} == {"http", "metrics"}
    if overlay == "overlays/dev":
        secret = of_kind(overlay, "Secret")["tidings-inbox"]["stringData"]["TIDINGS_INBOX_SECRET"]
        assert len(secret) >= 16


def test_the_scram_overlay_logs_consumers_and_scalers_in_the_same_way(monkeypatch: pytest.MonkeyPatch) -> None:
    overlay = "overlays/prod-scram"
    data = of_kind(overlay, "ConfigMap")["tidings-settings"]["data"]
    for name in [n for n in os.environ if n.startswith(LIBRDKAFKA_PREFIX)]:
        monkeypatch.delenv(name)
    for name, value in data.items():
        if name.startswith(LIBRDKAFKA_PREFIX):
            monkeypatch.setenv(name, value)  # as the pods get them (envFrom the ConfigMap)
    assert Settings().librdkafka == {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
                                   "ssl.ca.location": "/etc/tidings/kafka-ca/ca.crt"}
    consumers = {n: d for n, d in of_kind(overlay, "Deployment").items() if n != "tidings-inbox"}
    assert len(consumers) == 17
    for name, d in consumers.items():
        pod = d["spec"]["template"]["spec"]
        volume = next(v for v in pod["volumes"] if v["name"] == "kafka-ca")
        assert volume["secret"]["secretName"] == "tidings-kafka-ca", name
        mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "kafka-ca")
        assert f"{mount['mountPath']}/ca.crt" == data["TIDINGS_LIBRDKAFKA_SSL_CA_LOCATION"], name
        # the user and password come from the Secret tidings-kafka, read as settings
        assert {"secretRef": {"name": "tidings-kafka", "optional": True}} in pod["containers"][0]["envFrom"], name
    auth = of_kind(overlay, "TriggerAuthentication")
    refs = {r["parameter"]: (r["name"], r["key"]) for r in auth["tidings-kafka"]["spec"]["secretTargetRef"]}
    assert refs == {"username": ("tidings-kafka", f"{LIBRDKAFKA_PREFIX}SASL_USERNAME"),
                    "password": ("tidings-kafka", f"{LIBRDKAFKA_PREFIX}SASL_PASSWORD"),
                    "ca": ("tidings-kafka-ca", "ca.crt")}
    scalers = of_kind(overlay, "ScaledObject")
    assert len(scalers) == len(consumers)
    for name, scaler in scalers.items():
        trigger = scaler["spec"]["triggers"][0]
        assert trigger["authenticationRef"] == {"name": "tidings-kafka"}, name
        meta = trigger["metadata"]
        assert (meta["bootstrapServers"], meta["sasl"], meta["tls"]) == (
            data["TIDINGS_KAFKA_BOOTSTRAP"], "scram_sha512", "enable"), name
    # the plain prod overlay is unchanged: no credentials asked of a cluster that takes none
    assert "TriggerAuthentication" not in {d["kind"] for d in docs("overlays/prod")}
    assert all("authenticationRef" not in s["spec"]["triggers"][0]
               for s in of_kind("overlays/prod", "ScaledObject").values())
