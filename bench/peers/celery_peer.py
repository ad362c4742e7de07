#!/usr/bin/env python3
"""The "celery" peer: the fetch -> process -> aggregate pipeline on Celery 5.4 with RabbitMQ as
the broker and Redis for the aggregate, started, timed and cleaned up by this one script.

Pipeline (the same semantics as tributary's, the way Celery does it):
- one chain per URL, `fetch.s(url) | process.s() | aggregate.s()`; each task is routed to its
  own durable queue (persistent messages, one direct exchange for the three), acks_late
  (acked after the task returns), results ignored (the worker sends the chain's next task);
- fetch: GET the URL with a requests.Session per worker process (autoretry 3 times on a
  requests error, with backoff) and return the body; process: parse the JSON and return
  count, sum, min and max of its `prices`; aggregate: one Redis pipeline per document: per
  symbol HINCRBY docs and count, HINCRBYFLOAT sum, ZADD LT min, ZADD GT max, and INCR done
  (the same aggregate as the dramatiq peer, so both can be checked the same way).

Workers, one `python3 -m celery worker` per queue, prefork pool, prefetch multiplier 4,
without gossip, mingle, heartbeat and remote control (nothing but the three queues):
  fetch -c 4, process -c 2, aggregate -c 2
(-c pool processes). A prefork process runs one task at a time, so fetch gets a few to
cover its network waits, and the other two get one per core. Celery is CPU-bound here
(about 5 ms of CPU per URL over its processes). On a busy 2-core VM at 2,000 URLs,
2/1/1, 4/1/1, 4/2/2 and 8/2/2 all gave 100-300 URLs/s, within the noise of the
machine; 4/2/2 sits in the middle. The workers are this script imported as the module
`celery_peer`; the driver passes its arguments to them in the environment. The driver
itself, the aggregate and its check are shared with the dramatiq peer (peerkit.py).

Usage: celery_peer.py N BASE_URL [KEY_PREFIX] [REDIS_URL]
The driver starts the workers and waits until every stage queue has its consumer (not
timed), then times from the first chain enqueued for `BASE_URL/quotes/<i>.json` (i in 0..N)
until Redis counts N documents aggregated, checks the per-symbol document and price counts
against what N documents hold, stops the workers (SIGTERM, SIGKILL after a grace period)
and waits for them (so their CPU counts as this script's children), and deletes its queues
and exchange (`<prefix>.celery.<stage>` and `<prefix>.celery`, the prefix with ':' and other
unusual characters replaced by '.') and its Redis keys (`KEY_PREFIX:celery:*`).
Prints one JSON line: {"peer", "n", "seconds", "tasks_per_s", "enqueue_seconds", "counted",
"verified", "workers"}. RabbitMQ: $AMQP_URL, amqp://guest:guest@127.0.0.1:5672// by default.
Exit 3 (one line on stderr) when a Python package is missing, 1 on any other failure.
"""
import contextlib
import json
import os
import re
import sys

try:
    import celery
    import requests
    from celery import Celery, chain
    from kombu import Connection, Exchange, Queue

    import peerkit
except ImportError as e:  # the bench reports this line and skips the peer
    print(f"celery peer: missing Python package ({e.name}): "
          "pip install celery==5.4.0 redis requests", file=sys.stderr)
    sys.exit(3)

NAME = "celery peer"
MODULE = "celery_peer"
HERE = os.path.dirname(os.path.abspath(__file__))
# Prefork pool processes per stage (one worker per queue).
WORKERS = {"fetch": 4, "process": 2, "aggregate": 2}
PREFETCH_MULTIPLIER = 4

PREFIX, REDIS_URL = peerkit.settings("celery-peer", driver=__name__ == "__main__")
AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
AGG = peerkit.Aggregate(REDIS_URL, f"{PREFIX}:celery:")
BASE = re.sub(r"[^A-Za-z0-9._-]", ".", PREFIX) + ".celery"
QUEUE = {s: f"{BASE}.{s}" for s in peerkit.STAGES}
EXCHANGE = Exchange(BASE, type="direct", durable=True)

app = Celery(MODULE, broker=AMQP_URL)
app.conf.update(
    task_acks_late=True,
    task_ignore_result=True,
    worker_prefetch_multiplier=PREFETCH_MULTIPLIER,
    task_queues=[Queue(q, EXCHANGE, routing_key=q, durable=True) for q in QUEUE.values()],
    task_default_queue=QUEUE["fetch"],
    task_default_exchange=BASE,
    task_default_routing_key=QUEUE["fetch"],
    task_routes={s: {"queue": QUEUE[s]} for s in peerkit.STAGES},
    worker_enable_remote_control=False,
    broker_connection_retry_on_startup=True,
)
_http = requests.Session()  # per pool process


@app.task(name="fetch", autoretry_for=(requests.RequestException,), retry_backoff=True,
          max_retries=3)
def fetch(url):
    r = _http.get(url, timeout=10)
    r.raise_for_status()
    return r.text


@app.task(name="process")
def process(body):
    d = json.loads(body)
    p = d["prices"]
    return [d["symbol"], len(p), sum(p), min(p), max(p)]


@app.task(name="aggregate")
def aggregate(res):
    AGG.add(*res)


def worker_command(stage):
    return [sys.executable, "-m", "celery", "-A", MODULE, "worker", "-Q", QUEUE[stage],
            "-P", "prefork", "-c", str(WORKERS[stage]), "-n", f"{stage}.{BASE}@%h",
            "-l", "WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat"]


@contextlib.contextmanager
def amqp():
    conn = Connection(AMQP_URL)
    try:
        conn.ensure_connection(max_retries=1)
    except Exception as e:
        conn.release()
        raise peerkit.PeerError(f"cannot connect to RabbitMQ at {peerkit.where(AMQP_URL)}: "
                                f"{peerkit.describe(e)}") from e
    with conn:
        yield conn


def consumers(conn, queue):
    """The consumer count of `queue`, 0 while it does not exist yet."""
    ch = conn.channel()
    try:
        return ch.queue_declare(queue=queue, passive=True).consumer_count
    except conn.channel_errors:
        return 0
    finally:
        try:
            ch.close()
        except conn.connection_errors + conn.channel_errors:
            pass


def delete_queues(conn):
    ch = conn.channel()
    for q in QUEUE.values():
        ch.queue_delete(queue=q)
    ch.exchange_delete(exchange=BASE)


def enqueue(url):
    chain(fetch.s(url), process.s(), aggregate.s()).apply_async()


def peer():
    return peerkit.Peer(
        name=NAME, label=f"celery-{celery.__version__}", here=HERE,
        commands={s: worker_command(s) for s in peerkit.STAGES},
        consumers_needed={s: 1 for s in peerkit.STAGES},
        queues=QUEUE, agg=AGG, enqueue=enqueue, amqp=amqp, consumers=consumers,
        delete_queues=delete_queues,
        workers_text=", ".join(f"{s} -c {c}" for s, c in WORKERS.items()))


if __name__ == "__main__":
    peerkit.main(NAME, peer)
