#!/usr/bin/env python3
"""The "seed" peer: the seed project's asyncio/aiohttp script, pointed at any origin.

The seed's script hard-coded an nginx origin (http://127.0.0.1:8088/quotes/); this one does
exactly the same work against a base URL given on the command line, so `bench --peers` can
run it against tributary's in-process origin in the same session:

- one process, no broker, no durability;
- one aiohttp ClientSession (its default connector: at most 100 connections, i.e. 100
  concurrent GETs), `asyncio.gather` over all N URLs `BASE/quotes/<i>.json`;
- parse each body as JSON, compute the mean of its `prices` per document;
- one Redis pipeline at the end: HINCRBY count and HINCRBYFLOAT sum per symbol.

Usage: seed.py N BASE_URL [KEY_PREFIX] [REDIS_URL]
Prints one JSON line: {"peer", "n", "seconds", "tasks_per_s", "counted", "verified"}, where
`verified` says whether the documents per symbol (after the timed part) are what N
documents hold (document i is SYM%03d of i % 50). The Redis keys `KEY_PREFIX:agg:count`
and `KEY_PREFIX:agg:sum` are deleted before and after the run.
"""
import asyncio
import json
import sys
import time

try:
    import aiohttp
    import redis.asyncio as aioredis

    from peerkit import expected
except ImportError as e:  # the bench reports this line and skips the peer
    print(f"seed peer: missing Python package ({e.name}): pip install aiohttp redis",
          file=sys.stderr)
    sys.exit(3)

N = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
BASE = (sys.argv[2] if len(sys.argv) > 2 else "http://127.0.0.1:8088").rstrip("/") + "/quotes/"
PREFIX = sys.argv[3] if len(sys.argv) > 3 else "seed"
REDIS_URL = sys.argv[4] if len(sys.argv) > 4 else "redis://127.0.0.1:6379/"
COUNT_KEY, SUM_KEY = f"{PREFIX}:agg:count", f"{PREFIX}:agg:sum"


async def fetch_data(session, url):
    async with session.get(url) as r:
        r.raise_for_status()
        return await r.json(content_type=None)


async def process_data(d):
    p = d["prices"]
    return d["symbol"], sum(p) / len(p)


async def main():
    rd = aioredis.Redis.from_url(REDIS_URL)
    await rd.delete(COUNT_KEY, SUM_KEY)
    t = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=100)  # aiohttp's default, spelled out
    async with aiohttp.ClientSession(connector=connector) as s:
        results = await asyncio.gather(*(fetch_data(s, f"{BASE}{i}.json") for i in range(N)))
    processed = await asyncio.gather(*(process_data(r) for r in results))
    pipe = rd.pipeline()
    for sym, mean in processed:
        pipe.hincrby(COUNT_KEY, sym, 1)
        pipe.hincrbyfloat(SUM_KEY, sym, mean)
    await pipe.execute()
    dt = time.perf_counter() - t
    c = await rd.hgetall(COUNT_KEY)
    await rd.delete(COUNT_KEY, SUM_KEY)
    await rd.aclose()
    verified = {k.decode(): int(v) for k, v in c.items()} == expected(N)
    print(json.dumps({"peer": "seed-aiohttp", "n": N, "seconds": round(dt, 3),
                      "tasks_per_s": round(N / dt), "counted": sum(int(v) for v in c.values()),
                      "verified": verified}))


asyncio.run(main())
