"""Where the stream shards land on a Redis Cluster: `audit_events:{k}` for k < N, per master.

    .venv/bin/python ops/bench/shard_spread.py [--masters 3] [--max-shards 16]

Starts a private cluster laid out as `redis-cli --cluster create` lays it out (slots split evenly,
in order), asks it CLUSTER KEYSLOT of every shard stream and CLUSTER SLOTS for the owners, and
prints, for N = 1…max, the shards each master holds. Then it moves the slots of N = masters shards
so that each master holds one (CLUSTER SETSLOT on empty slots, before any event is written) and
checks the result the same way. Prints progress, then one JSON line.
"""

import argparse
import json
import tempfile
from pathlib import Path

import redis
from rich.console import Console
from rich.table import Table

from app.local.redis_cluster import LocalRedisCluster
from app.streams.keys import StreamKeys

console = Console(stderr=True)


def owners(client: redis.RedisCluster) -> list[tuple[int, int, str]]:
    """(first slot, last slot, master address), in slot order."""
    slots = client.execute_command("CLUSTER SLOTS")
    return sorted((start, end, ":".join(map(str, found["primary"]))) for (start, end), found in slots.items())


def spread(client: redis.RedisCluster, shards: int) -> dict[str, list[int]]:
    ranges = owners(client)
    found: dict[str, list[int]] = {address: [] for _, _, address in ranges}
    for index in range(shards):
        slot = int(client.execute_command("CLUSTER KEYSLOT", StreamKeys(shards=shards).shard_stream(index)))
        found[next(a for start, end, a in ranges if start <= slot <= end)].append(index)
    return found


def move_empty_slot(cluster: LocalRedisCluster, slot: int, target_port: int) -> None:
    """The documented way to move one slot (here an empty one: nothing to MIGRATE)."""
    source = cluster.master_of_slot(slot)
    target = next(node for node in cluster.nodes if node.port == target_port)
    source_client, target_client = source.client(), target.client()
    try:
        source_id = source_client.execute_command("CLUSTER MYID").decode()
        target_id = target_client.execute_command("CLUSTER MYID").decode()
        target_client.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source_id)
        source_client.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id)
        if source_client.execute_command("CLUSTER COUNTKEYSINSLOT", slot):
            raise RuntimeError(f"slot {slot} holds keys: move it with redis-cli --cluster reshard instead")
        for client in (target_client, source_client):
            client.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
    finally:
        source_client.close()
        target_client.close()


def main(args) -> dict:
    with tempfile.TemporaryDirectory(prefix="shard-spread-") as tmp:
        cluster = LocalRedisCluster(Path(tmp), masters=args.masters, replicas_per_master=0)
        cluster.start()
        client = redis.RedisCluster.from_url(cluster.url)
        try:
            masters = [address for _, _, address in owners(client)]
            masters = list(dict.fromkeys(masters))
            counts = {}
            table = Table("N", *(f"master {i + 1}" for i in range(len(masters))), "masters used", "largest share")
            for shards in range(1, args.max_shards + 1):
                per_master = [len(spread(client, shards)[address]) for address in masters]
                counts[shards] = per_master
                share = max(per_master) / shards
                table.add_row(str(shards), *map(str, per_master), str(sum(1 for c in per_master if c)),
                              f"{share:.0%}")
            console.print(table)

            # One shard per master for N = masters: move the slot of each shard that shares a
            # master to a master that has none.
            placed = spread(client, args.masters)
            empty = [address for address in masters if not placed[address]]
            moves = []
            for address in masters:
                for index in placed[address][1:]:
                    target = empty.pop()
                    slot = int(client.execute_command("CLUSTER KEYSLOT", StreamKeys(shards=args.masters)
                                                      .shard_stream(index)))
                    move_empty_slot(cluster, slot, int(target.rsplit(":", 1)[1]))
                    moves.append({"shard": index, "slot": slot, "to": target})
            cluster.wait_healthy()
            client.close()
            client = redis.RedisCluster.from_url(cluster.url)
            after = [len(spread(client, args.masters)[address]) for address in masters]
            for index in range(args.masters):  # every shard writable where it now lives
                client.xadd(StreamKeys(shards=args.masters).shard_stream(index), {"probe": "1"})
            console.print(f"N = {args.masters} after moving {len(moves)} slot(s): {after} shards per master")
        finally:
            client.close()
            cluster.stop()
    return {
        "masters": args.masters,
        "shards_per_master": counts,
        "smallest_n_on_every_master": min(n for n, c in counts.items() if all(c)),
        # The busiest master's share of the shards (1/masters is even).
        "largest_share": {n: round(max(c) / n, 3) for n, c in counts.items()},
        "moved_slots": moves,
        "after_move": after,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--masters", type=int, default=3)
    parser.add_argument("--max-shards", type=int, default=16)
    print(json.dumps(main(parser.parse_args())))
