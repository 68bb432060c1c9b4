"""Structural schemas for the custom resources in deploy/k8s (KEDA, Strimzi, Prometheus Operator).

kubernetes-validate ships schemas for Kubernetes' own kinds only, and the operators' CRDs
are not available offline here (they are not in any package registry this project uses).
These schemas are written from the operators' documented fields and cover the fields our
manifests use: unknown fields are rejected (as the API server's structural pruning would
drop them silently), types and ranges are checked. When a CRD changes, update them here.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]


def obj(props: Schema, required: list[str] | None = None) -> Schema:
    return {"type": "object", "properties": props, "required": required or [], "additionalProperties": False}


STRING = {"type": "string"}
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
K8S_NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", "maxLength": 253}
METADATA = obj({"name": K8S_NAME, "namespace": STRING, "labels": STRING_MAP, "annotations": STRING_MAP}, ["name"])
LABEL_SELECTOR = obj({"matchLabels": STRING_MAP})


def resource(api_version: str, kind: str, spec: Schema) -> Schema:
    return obj({"apiVersion": {"const": api_version}, "kind": {"const": kind}, "metadata": METADATA,
                "spec": spec}, ["apiVersion", "kind", "metadata", "spec"])


KAFKA_TOPIC = resource("kafka.strimzi.io/v1beta2", "KafkaTopic", obj({
    "topicName": {"type": "string", "pattern": r"^[a-zA-Z0-9._-]{1,249}$"},
    "partitions": {"type": "integer", "minimum": 1},
    "replicas": {"type": "integer", "minimum": 1, "maximum": 32767},
    "config": {"type": "object", "additionalProperties": {"type": ["string", "integer", "boolean", "number"]}},
}, ["partitions", "replicas"]))

SCALED_OBJECT = resource("keda.sh/v1alpha1", "ScaledObject", obj({
    "scaleTargetRef": obj({"name": STRING, "kind": STRING, "apiVersion": STRING}, ["name"]),
    "minReplicaCount": {"type": "integer", "minimum": 0},
    "maxReplicaCount": {"type": "integer", "minimum": 1},
    "pollingInterval": {"type": "integer", "minimum": 1},
    "cooldownPeriod": {"type": "integer", "minimum": 0},
    "advanced": obj({"horizontalPodAutoscalerConfig": obj({"behavior": {"type": "object"}})}),
    "triggers": {"type": "array", "minItems": 1, "items": obj({
        "type": {"const": "kafka"},
        "authenticationRef": obj({"name": STRING}, ["name"]),
        "metadata": obj({
            "bootstrapServers": STRING, "consumerGroup": STRING, "topic": STRING,
            "lagThreshold": {"type": "string", "pattern": r"^[0-9]+$"},
            "activationLagThreshold": {"type": "string", "pattern": r"^[0-9]+$"},
            "offsetResetPolicy": {"enum": ["earliest", "latest"]},
            "allowIdleConsumers": {"enum": ["true", "false"]},
            "sasl": {"enum": ["none", "plaintext", "scram_sha256", "scram_sha512", "gssapi", "oauthbearer"]},
            "tls": {"enum": ["enable", "disable"]},
        }, ["bootstrapServers", "consumerGroup"]),
    }, ["type", "metadata"])},
}, ["scaleTargetRef", "triggers"]))

# The parameters KEDA's Kafka scaler takes from a TriggerAuthentication.
KAFKA_AUTH_PARAMETERS = ["sasl", "username", "password", "tls", "ca", "cert", "key", "keyPassword"]
TRIGGER_AUTHENTICATION = resource("keda.sh/v1alpha1", "TriggerAuthentication", obj({
    "secretTargetRef": {"type": "array", "minItems": 1, "items": obj({
        "parameter": {"enum": KAFKA_AUTH_PARAMETERS}, "name": K8S_NAME, "key": STRING,
    }, ["parameter", "name", "key"])},
}, ["secretTargetRef"]))

RELABEL = obj({"action": {"enum": ["replace", "keep", "drop", "labelmap", "labeldrop", "labelkeep"]},
               "sourceLabels": {"type": "array", "items": STRING}, "targetLabel": STRING,
               "replacement": STRING, "regex": STRING, "separator": STRING})
POD_MONITOR = resource("monitoring.coreos.com/v1", "PodMonitor", obj({
    "selector": LABEL_SELECTOR,
    "namespaceSelector": {"type": "object"},
    "jobLabel": STRING,
    "podMetricsEndpoints": {"type": "array", "minItems": 1, "items": obj({
        "port": STRING, "path": STRING, "interval": {"type": "string", "pattern": r"^[0-9]+(ms|s|m|h)$"},
        "scrapeTimeout": STRING, "relabelings": {"type": "array", "items": RELABEL},
    }, ["port"])},
}, ["selector", "podMetricsEndpoints"]))

RULE = {"type": "object", "properties": {
    "alert": STRING, "record": STRING, "expr": STRING, "for": {"type": "string", "pattern": r"^[0-9]+(s|m|h)$"},
    "labels": STRING_MAP, "annotations": STRING_MAP}, "required": ["expr"], "additionalProperties": False,
    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}]}
PROMETHEUS_RULE = resource("monitoring.coreos.com/v1", "PrometheusRule", obj({
    "groups": {"type": "array", "minItems": 1, "items": obj({
        "name": STRING, "interval": STRING, "rules": {"type": "array", "minItems": 1, "items": RULE}},
        ["name", "rules"])},
}, ["groups"]))

SCHEMAS = {
    ("kafka.strimzi.io/v1beta2", "KafkaTopic"): KAFKA_TOPIC,
    ("keda.sh/v1alpha1", "ScaledObject"): SCALED_OBJECT,
    ("keda.sh/v1alpha1", "TriggerAuthentication"): TRIGGER_AUTHENTICATION,
    ("monitoring.coreos.com/v1", "PodMonitor"): POD_MONITOR,
    ("monitoring.coreos.com/v1", "PrometheusRule"): PROMETHEUS_RULE,
}
