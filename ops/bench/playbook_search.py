"""Playbook search benchmark: quality on the sample catalog, latency on 10,000 playbooks.

    .venv/bin/python ops/bench/playbook_search.py [--catalog ../shared/data/playbooks/catalog.yaml]
        [--rows 10000] [--requests 300] [--concurrency 4] [--throughput-seconds 10]

(a) quality: the incident descriptions below (written for this catalog, in words other than the
    playbooks'), each with the playbook that fits; recall@1, recall@3 and MRR through the
    service's search, and the confidences of right answers against those of queries no playbook
    fits (what the default min_confidence is chosen from); the cosine between the ONNX and the
    torch embeddings of every catalog text.
(b) latency: the catalog grown to N rows (variants of the real playbooks: their embeddings plus a
    little noise, other labels); p50/p99 of the full HTTP search against `datastorage serve`, and
    in the same run the p50 of a bare torch `SentenceTransformer.encode` of the same queries and
    of the bare SQL kNN; then searches/s with a few concurrent clients.
Prints progress, then one JSON line.
"""

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

import httpx
import numpy as np
from rich.console import Console
from rich.progress import Progress
from service import fresh_database, import_catalog_file, load_embedder, private_servers, start_api, stop_all

from app.catalog.embedding import Embedder, playbook_text
from app.catalog.importer import read_catalog
from app.catalog.search import rank, search
from app.catalog.store import create_pool
from app.core.settings import PROJECT_ROOT

DEFAULT_CATALOG = PROJECT_ROOT.parent / "shared" / "data" / "playbooks" / "catalog.yaml"

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
UNRELATED = [
    "the office coffee machine is out of order",
    "prepare the quarterly sales report for the board",
    "update the banner image on the marketing website",
    "book a meeting room for the team offsite",
    "translate the user manual into french",
    "which font should the company letterhead use",
]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


async def quality(pool, embedder: Embedder, catalog_path: Path) -> dict:
    ranks, right_confidence = [], []
    for query, expected in QUERIES:
        hits = await search(pool, embedder, query, min_confidence=0.0, max_results=10)
        ids = [h.playbook_id for h in hits]
        ranks.append(ids.index(expected) + 1 if expected in ids else None)
        if ids and ids[0] == expected:
            right_confidence.append(hits[0].confidence)
    unrelated_top = [(await search(pool, embedder, q, min_confidence=0.0, max_results=1))[0].confidence
                     for q in UNRELATED]
    entries = read_catalog(catalog_path)
    texts = [playbook_text(e.name, e.description, e.labels, e.content) for e in entries]
    torch_vectors = load_embedder("torch").encode_sync(texts)
    cosines = (torch_vectors * embedder.encode_sync(texts)).sum(axis=1)
    return {
        "queries": len(QUERIES),
        "recall_at_1": round(sum(r == 1 for r in ranks) / len(ranks), 3),
        "recall_at_3": round(sum(r is not None and r <= 3 for r in ranks) / len(ranks), 3),
        "mrr": round(sum(1 / r for r in ranks if r) / len(ranks), 3),
        "missed": [q for (q, _), r in zip(QUERIES, ranks) if r is None or r > 3],
        "right_top1_confidence_min": round(min(right_confidence), 3),
        "right_top1_confidence_p10": round(percentile(right_confidence, 0.10), 3),
        "unrelated_top1_confidence_max": round(max(unrelated_top), 3),
        "onnx_vs_torch_cosine_min": round(float(cosines.min()), 6),
    }


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
                await rank(conn, vectors[n % len(queries)], max_results=10, min_confidence=0.3)
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


async def main(args) -> dict:
    console = Console(stderr=True)
    with private_servers("search-bench-") as (tmp, postgres, redis_server):
        api = None
        try:
            url = await fresh_database(postgres, "bench_search", months_ahead=0)
            await import_catalog_file(url, args.catalog)
            pool = await create_pool(url, min_size=1, max_size=2)
            embedder = load_embedder("onnx")
            with Progress(console=console) as progress:
                found = await quality(pool, embedder, args.catalog)
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
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--throughput-seconds", type=float, default=10)
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
