"""Playbook search benchmark: quality on the sample catalog, latency on 10,000 playbooks.

    .venv/bin/python ops/bench/playbook_search.py [--catalog ../shared/data/playbooks/catalog.yaml]
        [--reports ops/bench/data/incident_reports.yaml] [--rows 10000] [--requests 300]
        [--concurrency 4] [--throughput-seconds 10]

(a) quality: the incident reports of ops/bench/data/incident_reports.yaml (alerts, log lines,
    kubectl output, chat; tune and holdout halves) through the service's search, every candidate
    with its `why`: recall@1, recall@3 and MRR of each signal alone (vector, text, signals), of reciprocal
    rank fusion of the two (k=5), of the service's fused ranking, and of the service without the
    model (degraded), per half and per style; the confidences of right first answers against those
    of queries no playbook fits (what the default min_confidence is chosen from); label filters
    honoured and no disabled, deprecated or older version returned; the 44 short queries below
    too; the cosine between the ONNX and the torch embeddings of every catalog text; the seconds a
    cold process takes to load the ONNX model (and whether it had to export it first).
(b) latency: the catalog grown to N rows (variants of the real playbooks: their embeddings plus a
    little noise, other labels); p50/p99 of the full HTTP search against `datastorage serve`, and
    in the same run the p50 of a bare torch `SentenceTransformer.encode` of the same queries and
    of the bare SQL kNN; then searches/s with a few concurrent clients.
Prints progress and tables (stderr), then one JSON line.
"""

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import yaml
from rich.console import Console
from rich.progress import Progress
from service import fresh_database, import_catalog_file, load_embedder, private_servers, start_api, stop_all

from app.catalog.embedding import Embedder, playbook_text
from app.catalog.importer import read_catalog
from app.catalog.playbook import version_key
from app.catalog.search import rank, search
from app.catalog.store import create_pool
from app.catalog.text_index import TextIndexCache
from app.core.settings import PROJECT_ROOT

DEFAULT_CATALOG = PROJECT_ROOT.parent / "shared" / "data" / "playbooks" / "catalog.yaml"
DEFAULT_REPORTS = PROJECT_ROOT / "ops" / "bench" / "data" / "incident_reports.yaml"
STYLES = ("alert", "log", "describe", "chat")
RRF_K = 5

QUERIES = [
    ("api container restarted, last state terminated reason OOMKilled exit code 137", "pod-oom-recovery"),
    ("my pod uses more memory than its limit and gets killed", "pod-oom-recovery"),
    ("whole worker node ran out of RAM, kernel oom killer took down kubelet", "node-kernel-oom-remediation"),
    ("pods restart in a loop right after start because an env variable has a wrong value", "crashloop-bad-config"),
    ("cannot pull container image: unauthorized from the private registry", "image-pull-registry-auth"),
    ("kubelet stopped posting status, node shows NotReady", "node-notready-drain"),
    ("kubelet is evicting pods because the node filesystem is almost full", "node-disk-pressure-eviction"),
    ("application writes fail with no space left on device on its persistent volume", "pvc-volume-expansion"),
    ("the ingress certificate expires in two days and was not renewed", "cert-manager-renewal"),
    ("services cannot resolve cluster hostnames, nslookup times out", "coredns-resolution-failure"),
    ("autoscaler is stuck at the maximum number of replicas while CPU stays at 95%", "hpa-max-replicas-scaleout"),
    ("latency went up and metrics show the container being CPU throttled by its limit", "cpu-throttling-limits"),
    ("app logs say timeout acquiring a connection from the database pool", "db-connection-pool-exhaustion"),
    ("the new release is broken, we need to go back to the previous deployment revision", "deployment-rollback"),
    ("deleting a namespace hangs forever in Terminating state", "namespace-stuck-terminating"),
    ("etcd requests are slow and the database size keeps growing", "etcd-defrag-latency"),
    ("users get 502 bad gateway from the ingress controller", "ingress-502-bad-gateway"),
    ("ingress answers 504 because the backend takes too long", "ingress-504-gateway-timeout"),
    ("pods are running but not ready, the service has no endpoints", "readiness-probe-failure"),
    ("healthy containers get restarted by a liveness check with a too short timeout", "liveness-probe-misconfig"),
    ("after applying a network policy the frontend can no longer reach the backend", "networkpolicy-traffic-blocked"),
    ("new pods stay Pending with FailedScheduling: insufficient cpu", "pod-pending-insufficient-resources"),
    ("pending pods but the cluster autoscaler does not add any node", "cluster-autoscaler-scaleup-failure"),
    ("kafka consumer group is falling behind, lag keeps growing", "kafka-consumer-lag"),
    ("redis used memory reached maxmemory and keys are being evicted", "redis-memory-eviction"),
    ("the postgres standby is minutes behind the primary", "postgres-replication-lag"),
    ("one container writes gigabytes of logs per hour and fills the node", "log-volume-runaway"),
    ("java service spends all its time in garbage collection, OutOfMemoryError: Java heap space", "jvm-heap-exhaustion"),
    ("process fails with too many open files", "file-descriptor-leak"),
    ("an API key leaked in a public repository and must be replaced", "secret-rotation"),
    ("pod creation is forbidden: exceeded quota in the namespace", "resource-quota-exceeded"),
    ("batch job failed, reached the backoff limit", "job-backoff-limit"),
    ("the nightly cronjob did not run at its scheduled time", "cronjob-missed-schedule"),
    ("istio sidecars fail mutual TLS handshakes between services", "mesh-mtls-failure"),
    ("calls to the payment provider return HTTP 429 too many requests", "external-api-rate-limit"),
    ("clients report x509: certificate signed by unknown authority, intermediate missing", "tls-chain-handshake-errors"),
    ("node clock is drifting, tokens are rejected as not yet valid", "node-clock-skew-ntp"),
    ("nvidia gpus are not allocatable on the node, device plugin errors", "gpu-node-failure"),
    ("node reports PIDPressure, thousands of defunct processes", "pid-pressure-zombies"),
    ("someone changed the deployment by hand, it differs from git", "config-drift-gitops"),
    ("statefulset update hangs with one pod not updated", "statefulset-stuck-rollout"),
    ("kubectl apply fails: failed calling webhook, context deadline exceeded", "admission-webhook-timeout"),
    ("a running image has a critical CVE and must be isolated", "image-vulnerability-quarantine"),
    ("persistent volume claim stays Pending, no volume gets provisioned", "pvc-pending-provisioning"),
]
# Queries no playbook fits, alternately in the tune and the holdout half.
UNRELATED = [
    "the office coffee machine is out of order again",
    "how many vacation days do I have left this year?",
    "prepare the quarterly sales report for the board meeting",
    "who approves expense reports over 500 euros",
    "update the banner image on the marketing website",
    "book a meeting room for the team offsite next thursday",
    "translate the user manual into french",
    "which font should the company letterhead use",
    "my laptop keyboard has a sticky space bar",
    "the printer on the 3rd floor jams on every page",
    "reset my password for the HR portal please",
    "what is the dress code for the holiday party",
    "can someone order more whiteboard markers",
    "parking garage gate doesn't open with my badge",
    "how do I submit my timesheet for last month",
    "the air conditioning in room B is far too cold",
    "lunch order for friday: pizza or sushi?",
    "new hire onboarding checklist for the sales team",
    "the wifi password for guests changed, what is it now",
    "draft a press release about our new product launch",
    "recommend a good book on negotiation skills",
    "the fridge in the kitchen smells terrible",
    "schedule the annual performance reviews",
    "our instagram post got only 12 likes",
    "the elevator in building C is stuck on floor 2",
    "plan the budget for next year's marketing campaign",
]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def recall(ranks: list[int | None]) -> dict:
    n = len(ranks)
    return {
        "n": n,
        "r1": round(sum(r == 1 for r in ranks) / n, 3) if n else None,
        "r3": round(sum(r is not None and r <= 3 for r in ranks) / n, 3) if n else None,
        "mrr": round(sum(1 / r for r in ranks if r) / n, 3) if n else None,
    }


def rank_of(order: list[str], expected: str) -> int | None:
    return order.index(expected) + 1 if expected in order else None


def by_signal(hits, signal: str) -> list[str]:
    """The candidates ordered by one signal of `why` alone (a null signal last), ties by id."""
    def key(hit):
        value = getattr(hit.why, signal)
        return (value is None, -(value or 0.0), hit.playbook_id)
    return [hit.playbook_id for hit in sorted(hits, key=key)]


def rrf(hits) -> list[str]:
    fused = {hit.playbook_id: 0.0 for hit in hits}
    for signal in ("vector", "text"):
        for n, playbook_id in enumerate(by_signal(hits, signal), 1):
            fused[playbook_id] += 1 / (RRF_K + n)
    return sorted(fused, key=lambda playbook_id: (-fused[playbook_id], playbook_id))


async def quality(pool, embedder: Embedder, catalog_path: Path, reports_path: Path, console: Console) -> dict:
    entries = read_catalog(catalog_path)
    latest = {}
    for entry in entries:
        if entry.playbook_id not in latest or version_key(entry.version) > version_key(latest[entry.playbook_id].version):
            latest[entry.playbook_id] = entry
    searchable = {(e.playbook_id, e.version) for e in latest.values() if e.status == "active"}
    reports = yaml.safe_load(reports_path.read_text())
    unrelated = [{"id": f"u{n:02d}", "query": q, "split": ("tune", "holdout")[n % 2], "style": "unrelated",
                  "expected": None} for n, q in enumerate(UNRELATED)]
    index = TextIndexCache()
    signals = ("vector", "text", "signals", "rrf", "fused", "degraded")
    ranks: dict[str, list] = {signal: [] for signal in signals}
    top_confidence: dict[str, list] = {"fused": [], "degraded": []}
    violations = {"label_filter": 0, "not_searchable": 0}
    for report in reports + unrelated:
        labels = report.get("labels") or {}
        hits = await search(pool, embedder, report["query"], labels=labels, max_results=100, text_index=index)
        degraded = await search(pool, None, report["query"], labels=labels, max_results=100, text_index=index)
        for hit in hits + degraded:
            violations["label_filter"] += any(hit.labels.get(k) not in (v, "*") for k, v in labels.items())
            violations["not_searchable"] += (hit.playbook_id, hit.version) not in searchable
        orders = {"vector": by_signal(hits, "vector"), "text": by_signal(hits, "text"),
                  "signals": by_signal(hits, "signals"), "rrf": rrf(hits),
                  "fused": [h.playbook_id for h in hits], "degraded": [h.playbook_id for h in degraded]}
        for signal in signals:
            ranks[signal].append(rank_of(orders[signal], report["expected"]) if report["expected"] else None)
        top_confidence["fused"].append(hits[0].confidence if hits else 0.0)
        top_confidence["degraded"].append(degraded[0].confidence if degraded else 0.0)
    everything = reports + unrelated
    table: dict = {}
    for signal in signals:
        for half in ("tune", "holdout"):
            chosen = [n for n, r in enumerate(everything) if r["expected"] and r["split"] == half]
            table[f"{signal}/{half}"] = recall([ranks[signal][n] for n in chosen])
            for style in STYLES:
                table[f"{signal}/{half}/{style}"] = recall(
                    [ranks[signal][n] for n in chosen if everything[n]["style"] == style])
    confidence = {}
    for signal in ("fused", "degraded"):
        for half in ("tune", "holdout"):
            right = [top_confidence[signal][n] for n, r in enumerate(everything)
                     if r["expected"] and r["split"] == half and ranks[signal][n] == 1]
            other = [top_confidence[signal][n] for n, r in enumerate(everything)
                     if r["expected"] is None and r["split"] == half]
            confidence[f"{signal}/{half}"] = {"right_top1_min": round(min(right), 3),
                                              "right_top1_p05": round(percentile(right, 0.05), 3),
                                              "unrelated_max": round(max(other), 3)}
    print_tables(console, table, confidence)

    own_ranks, right_confidence = [], []
    for query, expected in QUERIES:
        hits = await search(pool, embedder, query, max_results=10, text_index=index)
        ids = [h.playbook_id for h in hits]
        own_ranks.append(rank_of(ids, expected))
        if ids and ids[0] == expected:
            right_confidence.append(hits[0].confidence)
    texts = [playbook_text(e.name, e.description, e.labels, e.content) for e in entries]
    torch_vectors = load_embedder("torch").encode_sync(texts)
    cosines = (torch_vectors * embedder.encode_sync(texts)).sum(axis=1)
    holdout = table["fused/holdout"]
    return {
        "reports": len(reports),
        "holdout_recall_at_1": holdout["r1"], "holdout_recall_at_3": holdout["r3"], "holdout_mrr": holdout["mrr"],
        "tune": table["fused/tune"],
        "holdout_by_style": {style: table[f"fused/holdout/{style}"] for style in STYLES},
        "holdout_by_signal": {signal: table[f"{signal}/holdout"] for signal in signals},
        "tune_by_signal": {signal: table[f"{signal}/tune"] for signal in signals},
        "confidence": confidence,
        "label_filter_violations": violations["label_filter"],
        "non_searchable_returned": violations["not_searchable"],
        "own_queries": {"n": len(QUERIES), **recall(own_ranks),
                        "right_top1_confidence_min": round(min(right_confidence), 3)},
        "onnx_vs_torch_cosine_min": round(float(cosines.min()), 6),
    }


def print_tables(console: Console, table: dict, confidence: dict) -> None:
    from rich.table import Table

    out = Table(title="recall@1 recall@3 MRR")
    out.add_column("signal")
    out.add_column("half")
    for style in ("all", *STYLES):
        out.add_column(style)
    for signal in ("vector", "text", "signals", "rrf", "fused", "degraded"):
        for half in ("tune", "holdout"):
            cells = []
            for style in ("all", *STYLES):
                m = table[f"{signal}/{half}" + ("" if style == "all" else f"/{style}")]
                cells.append(f"{m['r1']:.3f} {m['r3']:.3f} {m['mrr']:.3f}")
            out.add_row(signal, half, *cells)
    console.print(out)
    console.print({"confidence": confidence})


async def grow(pool, rows: int) -> None:
    """Variants of the real playbooks up to `rows` rows: their vectors plus noise, other labels."""
    rng = np.random.default_rng(3)
    async with pool.acquire() as conn:
        originals = await conn.fetch("SELECT playbook_id, name, description, labels, embedding "
                                     "FROM playbook_catalog WHERE is_latest_version")
        existing = await conn.fetchval("SELECT count(*) FROM playbook_catalog")
        records = []
        for n in range(rows - existing):
            base = originals[n % len(originals)]
            vector = base["embedding"].to_numpy() + rng.normal(scale=0.04, size=384).astype(np.float32)
            labels = {**json.loads(base["labels"]), "team": f"team-{n % 50}", "cluster": f"c{n % 7}"}
            records.append((f"{base['playbook_id']}-variant-{n}", base["name"], base["description"],
                            json.dumps(labels), vector / np.linalg.norm(vector)))
        await conn.executemany(
            "INSERT INTO playbook_catalog (playbook_id, version, name, description, content, labels, "
            "is_latest_version, embedding) VALUES ($1, 'v1.0.0', $2, $3, '', $4, true, $5)", records)
        await conn.execute("UPDATE playbook_catalog SET embedded_input_hash = embedding_input_hash "
                           "WHERE embedded_input_hash IS NULL")
        await conn.execute("ANALYZE playbook_catalog")


async def latency(base_url: str, pool, embedder: Embedder, requests: int, concurrency: int,
                  seconds: float, progress: Progress) -> dict:
    queries = [q for q, _ in QUERIES]
    torch_model = load_embedder("torch")
    task = progress.add_task("latency", total=requests * 3)
    http_ms, torch_ms, sql_ms = [], [], []
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        # /readyz is 200 while the model loads (search answers degraded meanwhile): timing starts
        # once the model is loaded, not while its load holds the cores.
        deadline = time.monotonic() + 180
        while (await client.get("/readyz")).json()["checks"]["embedding_model"] != "ok":
            if time.monotonic() > deadline:
                raise RuntimeError("the API's embedding model did not load")
            await asyncio.sleep(0.2)
        for q in queries[:10]:  # warm-up
            await client.get("/api/v1/playbooks/search", params={"query": q})
        for n in range(requests):
            started = time.perf_counter()
            response = await client.get("/api/v1/playbooks/search", params={"query": queries[n % len(queries)]})
            http_ms.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, response.text
            progress.advance(task)
        for n in range(requests):
            started = time.perf_counter()
            torch_model.encode_sync([queries[n % len(queries)]])
            torch_ms.append((time.perf_counter() - started) * 1000)
            progress.advance(task)
        vectors = embedder.encode_sync(queries)
        async with pool.acquire() as conn:
            for n in range(requests):
                started = time.perf_counter()
                await rank(conn, vectors[n % len(queries)], max_results=10)
                sql_ms.append((time.perf_counter() - started) * 1000)
                progress.advance(task)

        done = 0
        deadline = time.perf_counter() + seconds

        async def client_loop(offset: int) -> None:
            nonlocal done
            n = offset
            while time.perf_counter() < deadline:
                response = await client.get("/api/v1/playbooks/search", params={"query": queries[n % len(queries)]})
                assert response.status_code == 200
                done += 1
                n += concurrency

        started = time.perf_counter()
        await asyncio.gather(*(client_loop(i) for i in range(concurrency)))
        throughput = done / (time.perf_counter() - started)
    http_p50, torch_p50 = statistics.median(http_ms), statistics.median(torch_ms)
    return {
        "http_p50_ms": round(http_p50, 2), "http_p99_ms": round(percentile(http_ms, 0.99), 2),
        "torch_encode_p50_ms": round(torch_p50, 2), "sql_knn_p50_ms": round(statistics.median(sql_ms), 2),
        "http_over_torch_encode_p50": round(http_p50 / torch_p50, 3),
        "searches_per_s": round(throughput, 1), "concurrency": concurrency,
    }


def cold_model_load() -> dict:
    """A process's start of the ONNX model as the service does it (cold imports, the default cache
    folder): seconds, and whether it had to export the model first."""
    code = ("import time; t = time.perf_counter(); from app.catalog.embedding import Embedder; "
            "from app.core.settings import Settings; Embedder('onnx', Settings().model_cache_dir); "
            "print('SECONDS', time.perf_counter() - t)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    seconds = float(done.stdout.split("SECONDS")[-1])
    output = done.stdout + done.stderr
    return {"onnx_load_s": round(seconds, 2), "exported": "embedding_model_exported" in output}


async def main(args) -> dict:
    console = Console(stderr=True, width=120)
    with private_servers("search-bench-") as (tmp, postgres, redis_server):
        api = None
        try:
            model_start = cold_model_load()
            url = await fresh_database(postgres, "bench_search", months_ahead=0)
            await import_catalog_file(url, args.catalog)
            pool = await create_pool(url, min_size=1, max_size=2)
            embedder = load_embedder("onnx")
            with Progress(console=console) as progress:
                found = await quality(pool, embedder, args.catalog, args.reports, console)
                found["model_start"] = model_start
                if args.quality_only:
                    await pool.close()
                    return found
                grow_task = progress.add_task(f"grow to {args.rows}", total=1)
                await grow(pool, args.rows)
                progress.advance(grow_task)
                api, base_url = start_api(url, redis_server.url, tmp / "api.log")
                timing = await latency(base_url, pool, embedder, args.requests,
                                       args.concurrency, args.throughput_seconds, progress)
            await pool.close()
        finally:
            stop_all([api] if api else [])
    return {**found, "rows": args.rows, "requests": args.requests, **timing}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", type=Path, default=DEFAULT_CATALOG)
    parser.add_argument("--reports", type=Path, default=DEFAULT_REPORTS)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--throughput-seconds", type=float, default=10)
    parser.add_argument("--quality-only", action="store_true", help="skip (b)")
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
