"""Where a consumer's time goes: CPU per event of each part, and a py-spy profile of the consumer.

    .venv/bin/python ops/bench/consumer_profile.py [--events 100000] [--sealed] [--top 25]

One `datastorage consume` is started and warmed up (one event stored); then N prepared events are
XADDed by a pipelined producer (faster than any consumer: a backlog forms at once) and the consumer
drains them while py-spy samples it (non-blocking, so the consumer runs at full speed). Reported:

* the consumer's drain rate, and the CPU seconds each process spent per event: the consumer, the
  Postgres server (all its backends), redis-server. A part's µs/event is what it costs on one core,
  so 1e6 / consumer_us_per_event is what one consumer core can take when Postgres and Redis run
  elsewhere (the capacity model of docs/SCALING.md);
* the functions where the consumer spends its samples (own time and time below), as a table on
  stderr and the whole collapsed stacks in --profile-out (flame-graph input).

Prints progress, then one JSON line.
"""

import argparse
import asyncio
import collections
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis as redis_sync
from ingest import Stream, make_events, produce_pipelined, start_consumers, stop_consumers, wait_for_rows
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from service import fresh_database, private_servers

from app.audit.integrity.keys import generate_key_pair

console = Console(stderr=True)
PY_SPY = str(Path(sys.executable).parent / "py-spy")
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, *, with_children: bool = False) -> float:
    """User + system CPU of a process (with its reaped children's when asked), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the command: state is field 3; utime, stime, cutime, cstime are fields 14-17.
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    return (utime + stime + ((cutime + cstime) if with_children else 0)) / TICKS


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (FileNotFoundError, ProcessLookupError):
                continue
    return found


def postgres_cpu(postmaster: int) -> float:
    """The server's CPU: the postmaster with its exited backends, plus each live backend."""
    total = cpu_seconds(postmaster, with_children=True)
    for child in children(postmaster):
        try:
            total += cpu_seconds(child)
        except FileNotFoundError:
            pass
    return total


# A py-spy frame, `function (path/to/file.py:line)`, shown as `function (file.py)`: one row per
# function, whatever the line.
_FRAME = re.compile(r"^(?P<function>.*?) \((?:[^()]*/)?(?P<file>[^/:()]+)(?::\d+)?\)$")


def summarize(collapsed: Path, top: int) -> tuple[list[dict], int]:
    """Own and inclusive sample shares per function from py-spy's collapsed stacks."""
    own: collections.Counter[str] = collections.Counter()
    below: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        frames = [_FRAME.sub(r"\g<function> (\g<file>)", frame) for frame in stack.split(";")]
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            below[frame] += count
    rows = [{"function": name, "own": round(own[name] / total, 3), "inclusive": round(below[name] / total, 3)}
            for name, _ in below.most_common()]
    return sorted(rows, key=lambda row: row["own"], reverse=True)[:top], total


async def main(args) -> dict:
    with private_servers("consumer-profile-") as (tmp, postgres, redis_server):
        url = await fresh_database(postgres, "profile")
        warm_up, *events = make_events(args.events + 1)
        stream = Stream(redis_server.url)
        commands = stream.xadd_commands(events)
        key_file = generate_key_pair(tmp / "keys")[0] if args.sealed else None
        postmaster = int((Path(postgres.pgdata) / "postmaster.pid").read_text().split()[0])
        redis_pid = int(redis_sync.Redis.from_url(redis_server.url).info("server")["process_id"])
        with Progress(console=console) as progress:
            [consumer] = start_consumers(url, stream, 1, tmp, key_file)
            try:
                # One event first: once it is stored the consumer has started (imports, pool, group)
                # and only the draining is measured.
                await produce_pipelined(stream.xadd_commands([warm_up]), progress,
                                        progress.add_task("warm-up", total=1))
                await wait_for_rows(url, 1, progress, progress.add_task("warm-up stored", total=1), timeout=120)
                spy = subprocess.Popen([PY_SPY, "record", "--pid", str(consumer.pid), "--nonblocking", "--rate",
                                        "200", "--format", "raw", "--output", str(args.profile_out),
                                        *(["--idle"] if args.idle else [])],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                cpu_before = (cpu_seconds(consumer.pid), postgres_cpu(postmaster), cpu_seconds(redis_pid))
                started = time.perf_counter()
                try:
                    await produce_pipelined(commands, progress, progress.add_task("XADD", total=len(events)))
                    await wait_for_rows(url, len(events) + 1, progress,
                                        progress.add_task("stored", total=len(events) + 1), timeout=900)
                    seconds = time.perf_counter() - started
                    cpu_after = (cpu_seconds(consumer.pid), postgres_cpu(postmaster), cpu_seconds(redis_pid))
                finally:
                    spy.send_signal(signal.SIGINT)  # py-spy writes its profile on SIGINT
                    spy.wait(timeout=60)
            finally:
                stop_consumers([consumer])
    consumer_cpu, postgres_cpu_s, redis_cpu = (after - before for before, after in zip(cpu_before, cpu_after))
    rows, samples = summarize(args.profile_out, args.top)
    table = Table("own", "incl.", "function")
    for row in rows:
        table.add_row(f"{row['own']:.1%}", f"{row['inclusive']:.1%}", row["function"])
    console.print(table)
    per_event = 1e6 / args.events
    return {
        "events": args.events,
        "sealed": args.sealed,
        "drain_events_per_s": round(args.events / seconds),
        "consumer_us_per_event": round(consumer_cpu * per_event, 1),
        "postgres_us_per_event": round(postgres_cpu_s * per_event, 1),
        "redis_us_per_event": round(redis_cpu * per_event, 1),
        "consumer_core_events_per_s": round(args.events / consumer_cpu) if consumer_cpu else None,
        "samples": samples,
        "profile": str(args.profile_out),
        "top_own": {row["function"]: row["own"] for row in rows[:10]},
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--sealed", action="store_true", help="with a signing key: every batch sealed")
    parser.add_argument("--idle", action="store_true", help="sample waiting too: where the consumer waits")
    parser.add_argument("--top", type=int, default=25, help="functions shown, by own samples")
    parser.add_argument("--profile-out", type=Path, default=Path("consumer-profile.txt"),
                        help="py-spy's collapsed stacks")
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
