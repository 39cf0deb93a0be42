"""The deployment artifacts say what the service needs: compose, Dockerfile, Kubernetes, alerts,
dashboard, AsyncAPI. No Docker engine or cluster runs here, so these check structure; the alerts
go through promtool and the dashboard's metric names through a running service's /metrics."""

import json
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from app.core.settings import PROJECT_ROOT, Settings
from tests.helpers import start_run, stop_with_ctrl_c, wait_for_event

OPS = PROJECT_ROOT / "ops"


def manifests() -> list[dict]:
    return [doc for path in sorted((OPS / "k8s").glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]


def by_kind(kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in manifests() if doc["kind"] == kind}


def test_compose_runs_pgvector_redis_with_aof_migrate_consumer_and_api():
    compose = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "redis", "migrate", "consumer", "api"}
    assert services["postgres"]["image"] == "pgvector/pgvector:pg16"
    redis_command = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_command and "--appendfsync everysec" in redis_command
    assert any(volume.endswith(":/data") for volume in services["redis"]["volumes"])
    for name in ("postgres", "redis", "api"):
        assert services[name]["healthcheck"]["test"], name
    assert services["migrate"]["command"] == ["migrate"]
    assert services["consumer"]["command"] == ["consume"] and services["api"]["command"] == ["serve"]
    for name in ("consumer", "api"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert services[name]["environment"]["DATASTORAGE_DATABASE_URL"].startswith("postgresql://")


def test_the_dockerfile_installs_cpu_torch_the_model_and_the_service():
    steps = (OPS / "Dockerfile").read_text()
    assert re.search(r"pip install .*torch==2\.13\.0 .*whl/cpu", steps)
    assert steps.index("torch==2.13.0") < steps.index("pip install --no-cache-dir -e .")
    for folder in ("app", "consumers", "schema"):
        assert f"COPY {folder} {folder}" in steps
    assert "ensure_onnx_export(" in steps and "HF_HUB_OFFLINE=1" in steps
    # The build's Python names modules that exist (the model export itself is tested elsewhere).
    [code] = re.findall(r'RUN python -c "(.*)"', steps)
    exec("\n".join(part.strip() for part in code.split(";") if part.strip().startswith("from ")), {})
    assert 'ENTRYPOINT ["datastorage"]' in steps


def test_kubernetes_deployments_probes_resources_and_budgets():
    deployments = by_kind("Deployment")
    assert set(deployments) == {"datastorage-api", "datastorage-consumer"}
    shutdown = Settings().shutdown_timeout_s
    for name, deployment in deployments.items():
        spec = deployment["spec"]["template"]["spec"]
        assert spec["terminationGracePeriodSeconds"] > shutdown, name
        [container] = spec["containers"]
        live, ready = container["livenessProbe"], container["readinessProbe"]
        assert (live["httpGet"]["path"], live["periodSeconds"], live["failureThreshold"]) == ("/healthz", 10, 3)
        assert (ready["httpGet"]["path"], ready["periodSeconds"], ready["failureThreshold"]) == ("/readyz", 5, 3)
        assert {ref.get("configMapRef", ref.get("secretRef"))["name"] for ref in container["envFrom"]} == {"datastorage"}
        resources = container["resources"]
        assert resources["requests"]["memory"] and resources["limits"]["memory"]
    api = deployments["datastorage-api"]["spec"]["template"]["spec"]["containers"][0]
    consumer = deployments["datastorage-consumer"]["spec"]["template"]["spec"]["containers"][0]
    # Above the peaks measured by ops/bench/memory.py and soak.py: API 645 MiB, consumer 119 MiB.
    assert mebibytes(api["resources"]["limits"]["memory"]) >= 645 * 1.3
    assert mebibytes(consumer["resources"]["limits"]["memory"]) >= 119 * 1.3
    assert api["args"] == ["serve"] and consumer["args"] == ["consume"]
    ports = {p["port"] for s in by_kind("Service").values() for p in s["spec"]["ports"]}
    assert {8080, 9090} <= ports
    budgets = by_kind("PodDisruptionBudget")
    assert {b["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] for b in budgets.values()} == {"api", "consumer"}
    assert "DATASTORAGE_DATABASE_URL" in by_kind("Secret")["datastorage"]["stringData"]
    assert by_kind("ConfigMap")["datastorage"]["data"]["DATASTORAGE_METRICS_PORT"] == "9090"


def test_kubernetes_rbac_lets_the_api_review_access_and_clients_use_the_reviewed_resource():
    [account] = by_kind("ServiceAccount")
    api = by_kind("Deployment")["datastorage-api"]["spec"]["template"]["spec"]
    assert api["serviceAccountName"] == account
    roles = by_kind("ClusterRole")

    def granted(role: str, group: str, resource: str) -> set[str]:
        return {verb for rule in roles[role]["rules"] if group in rule["apiGroups"] and resource in rule["resources"]
                for verb in rule["verbs"]}

    # The API's own account may create both reviews, and nothing else.
    [binding] = [b for b in by_kind("ClusterRoleBinding").values()
                 if {"kind": "ServiceAccount", "name": account} in [{k: s[k] for k in ("kind", "name")}
                                                                     for s in b["subjects"]]]
    reviewer = binding["roleRef"]["name"]
    assert granted(reviewer, "authentication.k8s.io", "tokenreviews") == {"create"}
    assert granted(reviewer, "authorization.k8s.io", "subjectaccessreviews") == {"create"}
    assert len(roles[reviewer]["rules"]) == 2
    # The client roles grant the verbs the service asks about, on the resource it is configured with.
    from app.api.kubernetes import VERBS
    configured = by_kind("ConfigMap")["datastorage"]["data"]
    defaults = Settings()
    group, resource = defaults.kubernetes_resource_group, defaults.kubernetes_resource
    assert (configured["DATASTORAGE_KUBERNETES_RESOURCE_GROUP"], configured["DATASTORAGE_KUBERNETES_RESOURCE"]) == (
        group, resource)
    assert granted("datastorage-reader", group, resource) == {VERBS["audit:read"]} == {VERBS["playbooks:read"]}
    assert granted("datastorage-writer", group, resource) == {VERBS["audit:write"]}
    assert granted("datastorage-admin", group, resource) == set(VERBS.values()) == {"get", "create", "update"}


def test_the_retention_cronjob_applies_the_policy_daily_without_a_prompt_and_never_twice_at_once():
    cronjob = by_kind("CronJob")["datastorage-retention"]
    spec = cronjob["spec"]
    assert spec["concurrencyPolicy"] == "Forbid" and len(spec["schedule"].split()) == 5
    [container] = spec["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["retention", "apply", "--yes"]
    assert {ref.get("configMapRef", ref.get("secretRef"))["name"] for ref in container["envFrom"]} == {"datastorage"}
    configured = by_kind("ConfigMap")["datastorage"]["data"]
    defaults = Settings()
    assert (int(configured["DATASTORAGE_RETENTION_DAYS"]), int(configured["DATASTORAGE_RETENTION_FLOOR_DAYS"])) == (
        defaults.retention_days, defaults.retention_floor_days) == (2555, 365)


def mebibytes(quantity: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(Mi|Gi)", quantity).groups()
    return int(number) * (1024 if unit == "Gi" else 1)


# The plan's alerts and those that make the stream's own failure modes visible; others may follow.
ALERTS = {"DatastorageDLQDepthHigh": "warning", "DatastorageWriteErrorRateHigh": "critical",
          "DatastoragePlaybookSearchSlow": "warning", "DatastorageConsumerLagGrowing": "warning",
          "DatastorageOldestPendingTooOld": "warning", "DatastorageReleaseErrors": "critical",
          "DatastorageStreamEntriesLost": "critical", "DatastorageStreamGroupRecreated": "warning",
          "DatastorageStreamEntryIdsAhead": "warning", "DatastorageConsumerFatalErrors": "critical",
          "DatastorageRetentionNotRunning": "warning",
          "DatastorageAuditUnsealed": "critical", "DatastorageAuditSealingDisabled": "warning",
          "DatastoragePartitionsEnsureStale": "warning"}


def test_alert_rules_are_valid_and_cover_what_operators_watch():
    path = OPS / "prometheus" / "alerts.yml"
    rules = {r["alert"]: r for g in yaml.safe_load(path.read_text())["groups"] for r in g["rules"]}
    assert {name: rules[name]["labels"]["severity"] for name in ALERTS if name in rules} == ALERTS
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
    assert "> 1000" in rules["DatastorageDLQDepthHigh"]["expr"]
    assert "> 0.05" in rules["DatastorageWriteErrorRateHigh"]["expr"]
    assert "0.95" in rules["DatastoragePlaybookSearchSlow"]["expr"] and "> 5" in rules["DatastoragePlaybookSearchSlow"]["expr"]
    assert rules["DatastorageConsumerLagGrowing"]["for"] == "10m"
    assert "> 300" in rules["DatastorageOldestPendingTooOld"]["expr"]
    assert "datastorage_retention_last_success_timestamp_seconds) > 48 * 3600" in rules[
        "DatastorageRetentionNotRunning"]["expr"]
    assert "datastorage_audit_unsealed_oldest_age_seconds" in rules["DatastorageAuditUnsealed"]["expr"]
    assert "> 86400" in rules["DatastoragePartitionsEnsureStale"]["expr"]
    promtool = shutil.which("promtool")
    if promtool:  # ops/dev/setup.sh installs it where it can (Debian's prometheus package)
        result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def metric_names(expression: str) -> set[str]:
    names = set(re.findall(r"\b(datastorage_[a-z_]+)", expression))
    return {re.sub(r"_(bucket|count|sum)$", "", name) for name in names}


async def test_every_dashboard_and_alert_metric_is_exposed_by_a_running_service(tmp_path):
    dashboard = json.loads((OPS / "grafana" / "datastorage.json").read_text())
    wanted = {name for panel in dashboard["panels"] for target in panel["targets"]
              for name in metric_names(target["expr"])}
    alerts = yaml.safe_load((OPS / "prometheus" / "alerts.yml").read_text())
    wanted |= {name for g in alerts["groups"] for r in g["rules"] for name in metric_names(r["expr"])}
    titles = " ".join(panel["title"].lower() for panel in dashboard["panels"])
    for topic in ("write", "end-to-end", "search", "dlq", "lag", "db connections", "errors", "tamper evidence"):
        assert topic in titles, topic

    from app.local.embedded import free_port
    metrics_port = free_port()
    process = start_run({"DATASTORAGE_DATA_DIR": str(tmp_path), "DATASTORAGE_EMBEDDED_REDIS_PORT": "0",
                         "DATASTORAGE_HTTP_PORT": str(free_port()), "DATASTORAGE_METRICS_PORT": str(metrics_port)})
    try:
        wait_for_event(process, "service_running")
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
        exposed = set(re.findall(r"^# TYPE (datastorage_[a-z_]+) ", text, re.MULTILINE))
        exposed |= {re.sub(r"_total$", "", name) + "_total" for name in exposed}  # counters' family names
        missing = sorted(name for name in wanted if name not in exposed and name.removesuffix("_total") not in exposed)
        assert not missing, missing
        # The consumer's probes ask its metrics listener: its own state, not any 200.
        assert urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/healthz", timeout=10).status == 200
        assert urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/readyz", timeout=10).status == 200
        with pytest.raises(urllib.error.HTTPError) as unknown:
            urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/anything", timeout=10)
        assert unknown.value.code == 404
    finally:
        assert stop_with_ctrl_c(process) == 0


def test_the_committed_asyncapi_document_is_current(tmp_path):
    out = tmp_path / "asyncapi.yaml"
    faststream = Path(sys.executable).parent / "faststream"
    subprocess.run([str(faststream), "docs", "gen", "--yaml", "--factory", "--out", str(out),
                    "consumers.audit:asyncapi_app"], cwd=PROJECT_ROOT, check=True, capture_output=True)
    assert out.read_text() == (PROJECT_ROOT / "docs" / "asyncapi.yaml").read_text(), (
        "docs/asyncapi.yaml is out of date: regenerate it with "
        "`faststream docs gen --yaml --factory --out docs/asyncapi.yaml consumers.audit:asyncapi_app`")
