"""deploy/k8s agrees with Kubernetes and with the code: what runs, on which port, reading which
settings, consuming which topics in which groups.

Core resources are validated offline against the Kubernetes OpenAPI schemas bundled with
kubernetes-validate; the operators' resources (Strimzi, KEDA, CloudNativePG), which it has no
schema for, get a structural check. Then the manifests are read against the code as the source
of truth: settings.load() and each service's own options, the services' subscriptions, the
topic registry, the CLI and the HTTP routes. Nothing here needs a cluster.
"""

from __future__ import annotations

import ast
import importlib
import re
from functools import cache
from pathlib import Path, PurePosixPath
from types import SimpleNamespace

import kubernetes_validate
import pytest
import yaml

from contracts.topics import TOPICS
from services import cli
from services.kit import settings
from services.kit.http import build_app
from services.kit.settings import SERVICES, load
from services.kit.topics import registry_topics

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "deploy" / "k8s" / "base"
KUSTOMIZATION = yaml.safe_load((BASE / "kustomization.yaml").read_text())

# The oldest Kubernetes the manifests are meant for, and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.30", kubernetes_validate.utils.latest_version())

# Custom resources: the operators' API groups and the kinds used from each.
CUSTOM_KINDS = {
    ("kafka.strimzi.io/v1beta2", "KafkaTopic"), ("kafka.strimzi.io/v1", "KafkaTopic"),
    ("kafka.strimzi.io/v1beta2", "KafkaUser"), ("kafka.strimzi.io/v1", "KafkaUser"),
    ("keda.sh/v1alpha1", "ScaledObject"), ("keda.sh/v1alpha1", "TriggerAuthentication"),
    ("postgresql.cnpg.io/v1", "Cluster"),
}
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


# --- reading the manifests ---------------------------------------------------------------------

def manifests() -> list[tuple[str, dict]]:
    """(file, resource) for every resource the kustomization lists, in order."""
    found = []
    for name in KUSTOMIZATION["resources"]:
        for doc in yaml.safe_load_all((BASE / name).read_text()):
            if doc is not None:
                found.append((name, doc))
    return found


RESOURCES = manifests()


def of_kind(kind: str) -> list[dict]:
    return [doc for _, doc in RESOURCES if doc["kind"] == kind]


def named(kind: str, name: str) -> dict:
    found = [doc for doc in of_kind(kind) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name!r}, found {len(found)}"
    return found[0]


def resource_id(item: tuple[str, dict]) -> str:
    file, doc = item
    return f"{file}:{doc['kind']}/{doc['metadata']['name']}"


def config_data(kind: str, name: str) -> dict[str, str]:
    doc = named(kind, name)
    return {**(doc.get("data") or {}), **(doc.get("stringData") or {})}


def environment(container: dict) -> dict[str, str]:
    """The variables a container gets: its envFrom sources (from these manifests) and its env.
    A value from a secret an operator writes (CloudNativePG, Strimzi) stands as `<secret>/<key>`."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(config_data("ConfigMap", source["configMapRef"]["name"]))
        if "secretRef" in source:
            env.update(config_data("Secret", source["secretRef"]["name"]))
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
        else:
            ref = var["valueFrom"].get("secretKeyRef") or var["valueFrom"].get("configMapKeyRef")
            env[var["name"]] = f"{ref['name']}/{ref['key']}"
    return env


def deployment_of(service: str) -> dict:
    """The Deployment whose main container runs `caseflow run <service>`."""
    found = [d for d in of_kind("Deployment") if runs(main_container(d)) == service]
    assert len(found) == 1, f"{service} should run in exactly one Deployment, runs in {len(found)}"
    return found[0]


def main_container(deployment: dict) -> dict:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def runs(container: dict) -> str | None:
    args = cli.parser().parse_args(container["args"])
    return args.service if args.command == "run" else None


def all_containers() -> list[tuple[str, dict]]:
    """(service, container) for every container and init container of every Deployment."""
    out = []
    for service in SERVICES:
        pod = deployment_of(service)["spec"]["template"]["spec"]
        out += [(service, c) for c in [*pod.get("initContainers", []), *pod["containers"]]]
    return out


def service_settings(service: str) -> settings.Settings:
    return settings.load(service, environment(main_container(deployment_of(service))))


@cache
def definition(service: str):
    return importlib.import_module(f"services.{service}.app").definition()


# --- which variables the code reads, found by what they change --------------------------------

def what_the_service_reads(service: str, env: dict[str, str]):
    """Everything a service's settings models make of an environment: settings.load() and
    the service's own options (its definition's `options`, read with its from_env). A value
    the code refuses counts as read, too."""
    try:
        read = [settings.load(service, env).model_dump()]
        options = definition(service).options
        if options is not None:
            read.append(type(options).from_env(env))
        return read
    except (ValueError, TypeError) as e:
        return ("refused", type(e).__name__)


def reads(service: str, env: dict[str, str], name: str) -> bool:
    """Does changing `name` in `env` change what the service makes of its environment?"""
    before = what_the_service_reads(service, env)
    return any(what_the_service_reads(service, {**env, name: probe}) != before
               for probe in ("probe-value", "1", "0", "true", "/probe"))


def test_the_probe_tells_a_setting_from_a_name_nothing_reads():
    """Guards the probe itself: it sees settings of each kind, and only them."""
    assert reads("cases", {}, "CASEFLOW_CASES_HTTP_PORT")
    assert reads("cases", {}, "CASEFLOW_HTTP_HOST")
    assert reads("notify", {}, "KAFKA_ENABLE_IDEMPOTENCE")
    assert reads("notify", {"KAFKA_ENABLE_IDEMPOTENCE": "false"}, "KAFKA_ENABLE_IDEMPOTENCE")
    assert reads("roster", {}, "DATABASE_URL")
    assert reads("roster", {}, "CASEFLOW_ROSTER_PACKAGES")  # the roster's own options
    assert reads("caseload", {}, "CASEFLOW_CASELOAD_CHANGES_RETENTION_DAYS")
    assert not reads("cases", {}, "CASEFLOW_ROSTER_PACKAGES")  # another service's option
    assert not reads("cases", {}, "CASEFLOW_CASES_HTTP_PROT")  # a typo
    # A service's own name wins over the shared one, which then changes nothing.
    assert not reads("cases", {"CASEFLOW_CASES_HTTP_PORT": "9000"}, "CASEFLOW_HTTP_PORT")


# --- Kubernetes' own schemas, and the operators' resources -------------------------------------

def test_the_kustomization_lists_every_manifest_in_base():
    listed = set(KUSTOMIZATION["resources"])
    on_disk = {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("item", [r for r in RESOURCES if (r[1]["apiVersion"], r[1]["kind"]) not in CUSTOM_KINDS],
                         ids=resource_id)
def test_core_resources_are_valid_kubernetes(item, version):
    _, doc = item
    try:
        kubernetes_validate.validate(doc, version, strict=True)  # strict: no unknown fields
    except kubernetes_validate.ValidationError as e:
        pytest.fail(f"{resource_id(item)} is not valid for Kubernetes {version}: "
                    f"{'.'.join(str(p) for p in e.path)}: {e.message}")


def test_every_resource_is_a_core_kind_or_a_known_custom_one():
    for item in RESOURCES:
        doc = item[1]
        assert set(doc) <= {"apiVersion", "kind", "metadata", "spec", "data", "stringData", "type"}, resource_id(item)
        assert DNS_SUBDOMAIN.match(doc["metadata"]["name"]), resource_id(item)
        assert "namespace" not in doc["metadata"], f"{resource_id(item)}: the kustomization sets the namespace"
        if (doc["apiVersion"], doc["kind"]) in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[-1])
        except kubernetes_validate.SchemaNotFoundError:
            pytest.fail(f"{resource_id(item)}: neither a Kubernetes kind nor a known operator's")


STRIMZI_CLUSTER = "caseflow"


def test_kafka_topics_are_well_formed_strimzi_resources():
    topics = of_kind("KafkaTopic")
    assert topics
    for topic in topics:
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == STRIMZI_CLUSTER
        spec = topic["spec"]
        assert set(spec) <= {"topicName", "partitions", "replicas", "config"}, spec
        assert isinstance(spec["partitions"], int) and spec["partitions"] >= 1
        assert spec["replicas"] == 3
        assert spec["config"]["min.insync.replicas"] == 2
        assert all(isinstance(v, (str, int, bool)) for v in spec["config"].values())


def test_the_kafka_user_is_a_scram_user_of_the_same_cluster():
    (user,) = of_kind("KafkaUser")
    assert user["metadata"]["labels"]["strimzi.io/cluster"] == STRIMZI_CLUSTER
    assert user["spec"]["authentication"] == {"type": "scram-sha-512"}


KAFKA_TRIGGER_METADATA = {"bootstrapServers", "consumerGroup", "topic", "lagThreshold", "activationLagThreshold",
                          "offsetResetPolicy", "allowIdleConsumers", "limitToPartitionsWithLag", "sasl", "tls"}
KAFKA_AUTH_PARAMETERS = {"username", "password", "ca", "cert", "key", "keyPassword", "sasl", "tls"}


def test_scaled_objects_are_well_formed_keda_resources():
    scaled = of_kind("ScaledObject")
    assert scaled
    authentications = {a["metadata"]["name"] for a in of_kind("TriggerAuthentication")}
    for so in scaled:
        spec = so["spec"]
        target = named("Deployment", spec["scaleTargetRef"]["name"])
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        assert spec["triggers"]
        for trigger in spec["triggers"]:
            assert trigger["type"] in ("kafka", "cpu"), trigger
            metadata = trigger["metadata"]
            assert all(isinstance(v, str) for v in metadata.values()), f"KEDA metadata values are strings: {metadata}"
            if trigger["type"] == "kafka":
                assert {"bootstrapServers", "consumerGroup", "topic", "lagThreshold"} <= set(metadata)
                assert set(metadata) <= KAFKA_TRIGGER_METADATA, metadata
                assert int(metadata["lagThreshold"]) > 0
                assert trigger["authenticationRef"]["name"] in authentications
            else:  # a CPU trigger needs the target's CPU requests
                assert trigger["metricType"] == "Utilization" and 0 < int(metadata["value"]) <= 100
                assert main_container(target)["resources"]["requests"]["cpu"]


def test_trigger_authentications_pass_only_kafka_parameters_from_real_sources():
    for auth in of_kind("TriggerAuthentication"):
        spec = auth["spec"]
        assert set(spec) <= {"secretTargetRef", "env"}
        for ref in spec.get("secretTargetRef", []):
            assert set(ref) == {"parameter", "name", "key"} and ref["parameter"] in KAFKA_AUTH_PARAMETERS
        for ref in spec.get("env", []):
            assert ref["parameter"] in KAFKA_AUTH_PARAMETERS
            # resolved from the scaled Deployment's container environment
            for so in of_kind("ScaledObject"):
                container = main_container(named("Deployment", so["spec"]["scaleTargetRef"]["name"]))
                assert ref["name"] in environment(container), (so["metadata"]["name"], ref["name"])


def test_postgres_clusters_are_well_formed_cloudnativepg_resources():
    clusters = of_kind("Cluster")
    assert clusters
    for cluster in clusters:
        spec = cluster["spec"]
        assert isinstance(spec["instances"], int) and spec["instances"] >= 1
        assert re.fullmatch(r"\d+(Mi|Gi|Ti)", spec["storage"]["size"])
        assert set(spec["bootstrap"]["initdb"]) >= {"database", "owner"}


# --- the Deployments against the code ----------------------------------------------------------

def test_every_caseflow_command_in_the_manifests_is_a_real_one():
    for service, container in all_containers():
        try:
            cli.parser().parse_args(container["args"])
        except SystemExit:
            pytest.fail(f"{service}/{container['name']}: `caseflow {' '.join(container['args'])}` is not a command")


def test_every_container_runs_the_kustomization_image():
    (image,) = KUSTOMIZATION["images"]
    for service, container in all_containers():
        assert container["image"] == image["name"], f"{service}/{container['name']}"


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_migrates_its_own_database_before_it_starts(service):
    pod = deployment_of(service)["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    args = cli.parser().parse_args(init["args"])
    assert (args.command, args.service) == ("migrate", service)
    # the same database as the service itself
    own = f"CASEFLOW_{service.upper()}_DATABASE_URL"
    assert environment(init)[own] == environment(main_container(deployment_of(service)))[own]


@pytest.mark.parametrize("service", SERVICES)
def test_every_variable_a_service_is_given_is_one_its_settings_read(service):
    for _, container in [c for c in all_containers() if c[0] == service]:
        env = environment(container)
        unread = sorted(name for name in env if not reads(service, env, name))
        assert not unread, f"{service}/{container['name']} sets variables its settings ignore: {unread}"


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_listens_on_its_port_on_all_interfaces(service):
    deployment = deployment_of(service)
    container = main_container(deployment)
    s = service_settings(service)
    assert s.http_host == "0.0.0.0"
    assert [p["containerPort"] for p in container["ports"]] == [s.http_port]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(s.http_port)
    (svc,) = [v for v in of_kind("Service")
              if v["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()]
    named_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for port in svc["spec"]["ports"]:
        target = port["targetPort"]
        assert named_ports.get(target, target) == s.http_port


def routes(service: str) -> set[str]:
    """The paths a service's HTTP app serves, built as the runtime builds it (not started)."""
    runtime = SimpleNamespace(name=service, verifier=None, pool=None,
                              settings=load(service, {"CASEFLOW_JWT_SECRET": "x" * 40}))
    app = build_app(runtime, definition(service).routers)
    return {route.path for route in app.routes if hasattr(route, "path")}


@pytest.mark.parametrize("service", SERVICES)
def test_probes_ask_the_health_endpoints_on_the_service_port(service):
    container = main_container(deployment_of(service))
    paths = routes(service)
    named_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    expected = {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    for probe, path in expected.items():
        get = container[probe]["httpGet"]
        assert get["path"] == path and path in paths
        assert named_ports.get(get["port"], get["port"]) == service_settings(service).http_port
    assert "/metrics" in paths


def broker_graceful_timeout() -> float:
    """graceful_timeout passed to the KafkaBroker in services/kit/runtime.py: how long stop()
    waits for in-flight batches."""
    tree = ast.parse((ROOT / "services" / "kit" / "runtime.py").read_text())
    found = [kw.value.value for node in ast.walk(tree) if isinstance(node, ast.Call)
             and getattr(node.func, "id", None) == "KafkaBroker" for kw in node.keywords if kw.arg == "graceful_timeout"]
    assert len(found) == 1, "the runtime should set the broker's graceful_timeout once"
    return float(found[0])


@pytest.mark.parametrize("service", SERVICES)
def test_kubernetes_waits_longer_than_the_longest_batch_may_take_to_finish(service):
    pod = deployment_of(service)["spec"]["template"]["spec"]
    container = main_container(deployment_of(service))
    pause = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    stopping = 10  # after the batches: tasks cancelled, pool closed, consumer groups left
    assert pod["terminationGracePeriodSeconds"] >= pause + broker_graceful_timeout() + stopping


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_has_a_database_of_its_own_from_cloudnativepg(service):
    container = main_container(deployment_of(service))
    (var,) = [v for v in container["env"] if v["name"] == f"CASEFLOW_{service.upper()}_DATABASE_URL"]
    ref = var["valueFrom"]["secretKeyRef"]
    clusters = {c["metadata"]["name"]: c for c in of_kind("Cluster")}
    cluster = ref["name"].removesuffix("-app")  # CloudNativePG's secret for the cluster's application user
    assert ref["key"] == "uri" and ref["name"] == f"{cluster}-app" and cluster in clusters
    assert clusters[cluster]["spec"]["bootstrap"]["initdb"]["database"] == service
    assert service_settings(service).database_url == f"{cluster}-app/uri"  # no other URL shadows it


def test_no_two_services_share_a_database_cluster():
    secrets = [environment(main_container(deployment_of(s)))[f"CASEFLOW_{s.upper()}_DATABASE_URL"] for s in SERVICES]
    assert len(set(secrets)) == len(SERVICES)
    assert len(of_kind("Cluster")) == len(SERVICES)


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_reaches_kafka_as_the_strimzi_user_with_the_cluster_ca(service):
    container = main_container(deployment_of(service))
    kafka = service_settings(service).kafka
    (user,) = of_kind("KafkaUser")
    assert kafka.security_protocol == "SASL_SSL" and kafka.sasl_mechanism == "SCRAM-SHA-512"
    assert kafka.sasl_username == user["metadata"]["name"]
    assert kafka.sasl_password == f"{user['metadata']['name']}/password"  # the User Operator's secret
    for server in kafka.bootstrap_servers.split(","):
        assert server.startswith(f"{STRIMZI_CLUSTER}-kafka-bootstrap:")
    # the CA file is in a volume mounted from the cluster CA secret
    volumes = {v["name"]: v for v in deployment_of(service)["spec"]["template"]["spec"]["volumes"]}
    (mount,) = [m for m in container["volumeMounts"]
                if PurePosixPath(kafka.ssl_cafile).parent == PurePosixPath(m["mountPath"])]
    secret = volumes[mount["name"]]["secret"]
    assert secret["secretName"] == f"{STRIMZI_CLUSTER}-cluster-ca-cert"
    assert PurePosixPath(kafka.ssl_cafile).name in {i["path"] for i in secret["items"]}


def test_uploaded_roster_packages_go_to_a_volume_every_roster_instance_shares():
    deployment = deployment_of("roster")
    container = main_container(deployment)
    packages = type(definition("roster").options).from_env(environment(container)).packages
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    (mount,) = [m for m in container["volumeMounts"] if PurePosixPath(m["mountPath"]) == PurePosixPath(packages)]
    claim = named("PersistentVolumeClaim", volumes[mount["name"]]["persistentVolumeClaim"]["claimName"])
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_has_a_disruption_budget_that_lets_one_instance_go_at_a_time(service):
    labels = deployment_of(service)["spec"]["template"]["metadata"]["labels"]
    budgets = [p for p in of_kind("PodDisruptionBudget")
               if p["spec"]["selector"]["matchLabels"].items() <= labels.items()]
    assert len(budgets) == 1
    assert budgets[0]["spec"] == {"maxUnavailable": 1, "selector": budgets[0]["spec"]["selector"]}


# --- topics and consumer groups against the registry and the subscriptions ---------------------

def test_every_registry_topic_and_its_dead_letter_topic_has_a_kafka_topic_with_its_partitions():
    kafka = service_settings("roster").kafka  # the topic prefix is shared by all
    expected = {t.name: (t.num_partitions, t.replication_factor) for t in registry_topics(kafka, replication_factor=3)}
    declared = {t["spec"].get("topicName", t["metadata"]["name"]): (t["spec"]["partitions"], t["spec"]["replicas"])
                for t in of_kind("KafkaTopic")}
    assert len(of_kind("KafkaTopic")) == len(declared), "a topic is declared twice"
    assert declared == expected
    assert len(expected) == 2 * len(TOPICS)


def test_services_share_one_topic_namespace():
    assert len({service_settings(s).kafka.topic_prefix for s in SERVICES}) == 1


def scaled_object_of(service: str) -> dict | None:
    found = [so for so in of_kind("ScaledObject")
             if so["spec"]["scaleTargetRef"]["name"] == deployment_of(service)["metadata"]["name"]]
    assert len(found) <= 1
    return found[0] if found else None


KEDA_SASL = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}
CONSUMERS = [s for s in SERVICES if definition(s).subscriptions]


def test_services_that_consume_nothing_have_no_lag_to_scale_on():
    # Every service consumes today (notify, the last, since issue 13); one that stops would
    # have no lag to scale on, and must lose its ScaledObject.
    for service in set(SERVICES) - set(CONSUMERS):
        assert scaled_object_of(service) is None, service
    assert set(CONSUMERS) == set(SERVICES)


@pytest.mark.parametrize("service", CONSUMERS)
def test_a_service_scales_on_the_lag_of_exactly_the_groups_it_consumes_in(service):
    subscriptions = definition(service).subscriptions
    scaled = scaled_object_of(service)
    kafka = service_settings(service).kafka
    kafka_triggers = [t["metadata"] for t in scaled["spec"]["triggers"] if t["type"] == "kafka"]
    scaled_on = {(m["topic"], m["consumerGroup"]) for m in kafka_triggers}
    consumed = {(kafka.topic(s.topic.name), kafka.topic(s.consumer)) for s in subscriptions}
    assert scaled_on == consumed and len(kafka_triggers) == len(consumed)
    for metadata in kafka_triggers:
        assert metadata["bootstrapServers"] == kafka.bootstrap_servers
        assert metadata["sasl"] == KEDA_SASL[kafka.sasl_mechanism]
        assert metadata["tls"] == ("enable" if kafka.security_protocol.endswith("SSL") else "disable")


@pytest.mark.parametrize("service", CONSUMERS)
def test_a_service_scales_to_at_most_the_partitions_of_its_widest_topic(service):
    subscriptions = definition(service).subscriptions
    scaled = scaled_object_of(service)
    assert scaled["spec"]["maxReplicaCount"] == max(s.topic.partitions for s in subscriptions)
    assert scaled["spec"]["minReplicaCount"] == deployment_of(service)["spec"]["replicas"]


# --- the README's table of partitions ----------------------------------------------------------

def readme_partition_table() -> dict[str, list[str]]:
    """The rows of the README's "Partitions and instances" table, by topic."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Partitions and instances", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        if line.startswith("| `"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0].strip("`")] = cells
    return rows


def test_the_readme_gives_every_topic_its_key_partitions_and_consumer_groups():
    rows = readme_partition_table()
    assert set(rows) == set(TOPICS)
    groups: dict[str, set[str]] = {name: set() for name in TOPICS}
    for service in SERVICES:
        for s in definition(service).subscriptions:
            groups[s.topic.name].add(f"{service} (`{s.consumer}`)")
    for name, topic in TOPICS.items():
        _, key, partitions, _, consumed_by, useful = rows[name]
        assert key == f"`{topic.key_field}`" and int(partitions) == topic.partitions, name
        named_groups = {g.strip() for g in consumed_by.split(",")} if groups[name] else set()
        assert named_groups == groups[name], name
        for service in {g.split()[0] for g in groups[name]}:
            assert f"{topic.partitions} of {service}" in useful, (name, useful)


# --- without KEDA: CPU autoscalers in place of the ScaledObjects -------------------------------

WITHOUT_KEDA = ROOT / "deploy" / "k8s" / "without-keda"


def hpas() -> list[dict]:
    overlay = yaml.safe_load((WITHOUT_KEDA / "kustomization.yaml").read_text())
    assert "../base" in overlay["resources"]
    # the overlay drops every KEDA resource of the base
    assert [p["target"] for p in overlay["patches"]] == [{"group": "keda.sh"}]
    assert all("$patch: delete" in p["patch"] for p in overlay["patches"])
    return [doc for name in overlay["resources"] if name != "../base"
            for doc in yaml.safe_load_all((WITHOUT_KEDA / name).read_text()) if doc]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_autoscalers_without_keda_are_valid_kubernetes(version):
    found = hpas()
    assert found
    for doc in found:
        kubernetes_validate.validate(doc, version, strict=True)


def test_without_keda_each_consuming_service_autoscales_within_its_scaled_objects_bounds():
    by_target = {h["spec"]["scaleTargetRef"]["name"]: h["spec"] for h in hpas()}
    assert set(by_target) == {deployment_of(s)["metadata"]["name"] for s in CONSUMERS}
    for service in CONSUMERS:
        scaled = scaled_object_of(service)["spec"]
        hpa = by_target[deployment_of(service)["metadata"]["name"]]
        assert (hpa["minReplicas"], hpa["maxReplicas"]) == (scaled["minReplicaCount"], scaled["maxReplicaCount"])
