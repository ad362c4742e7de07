#!/usr/bin/env python3
"""The "dramatiq" peer: the fetch -> process -> aggregate pipeline on Dramatiq 2 with RabbitMQ
as the broker and Redis for the aggregate, started, timed and cleaned up by this one script.

Pipeline (the same semantics as tributary's, the way Dramatiq does it):
- three actors, `fetch`, `process`, `aggregate`, each on its own durable RabbitMQ queue
  (plus the `.DQ` delay and `.XQ` dead-letter queues Dramatiq declares beside each one);
  messages are persistent and acked after the actor returns; each actor sends the next
  stage's message;
- fetch: GET the URL with a requests.Session per worker process (retried 3 times on a
  requests error, 1 s minimum backoff); process: parse the JSON and compute count, sum, min
  and max of its `prices`; aggregate: one Redis pipeline per document: per symbol HINCRBY
  docs and count, HINCRBYFLOAT sum, ZADD LT min, ZADD GT max, and INCR done.

Workers, one `python3 -m dramatiq` master per queue, the best measured on 2 cores:
  fetch -p 2 -t 8, process -p 1 -t 4, aggregate -p 1 -t 4
(-p worker processes, -t threads each). They are this script imported as the module
`dramatiq_peer`; the driver passes its arguments to them in the environment. The driver
itself, the aggregate and its check are shared with the celery peer (peerkit.py).

Usage: dramatiq_peer.py N BASE_URL [KEY_PREFIX] [REDIS_URL]
The driver starts the workers and waits until every stage queue has its consumers (not
timed), then times from the first enqueue of `BASE_URL/quotes/<i>.json` (i in 0..N) until
Redis counts N documents aggregated, checks the per-symbol document and price counts
against what N documents hold, stops the workers (SIGTERM, SIGKILL after a grace period)
and waits for them (so their CPU counts as this script's children), and deletes its queues
(`<prefix>.dramatiq.<stage>`, the prefix with every character Dramatiq rejects in a queue
name replaced by '.') and its Redis keys (`KEY_PREFIX:dramatiq:*`).
Prints one JSON line: {"peer", "n", "seconds", "tasks_per_s", "enqueue_seconds", "counted",
"verified", "workers"}. RabbitMQ: $AMQP_URL, amqp://guest:guest@127.0.0.1:5672/%2f by default.
Exit 3 (one line on stderr) when a Python package is missing, 1 on any other failure.
"""
import contextlib
import json
import os
import re
import sys

try:
    import dramatiq
    import pika
    import requests
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    import peerkit
except ImportError as e:  # the bench reports this line and skips the peer
    print(f"dramatiq peer: missing Python package ({e.name}): "
          "pip install 'dramatiq[rabbitmq]' redis requests", file=sys.stderr)
    sys.exit(3)

NAME = "dramatiq peer"
MODULE = "dramatiq_peer"
HERE = os.path.dirname(os.path.abspath(__file__))
# Worker flags per stage: (processes, threads per process).
WORKERS = {"fetch": (2, 8), "process": (1, 4), "aggregate": (1, 4)}

PREFIX, REDIS_URL = peerkit.settings("dramatiq-peer", driver=__name__ == "__main__")
AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
AGG = peerkit.Aggregate(REDIS_URL, f"{PREFIX}:dramatiq:")


def queue_base(prefix):
    """The prefix as a Dramatiq queue name: [a-zA-Z_][a-zA-Z0-9._-]*."""
    base = re.sub(r"[^A-Za-z0-9._-]", ".", prefix)
    return base if re.match(r"[A-Za-z_]", base) else "q" + base


QUEUE = {s: f"{queue_base(PREFIX)}.dramatiq.{s}" for s in peerkit.STAGES}

broker = RabbitmqBroker(url=AMQP_URL)
dramatiq.set_broker(broker)
_http = requests.Session()  # per process, shared by the worker threads


@dramatiq.actor(actor_name="fetch", queue_name=QUEUE["fetch"], max_retries=3, min_backoff=1000,
                retry_when=lambda n, e: n < 3 and isinstance(e, requests.RequestException))
def fetch(url):
    r = _http.get(url, timeout=10)
    r.raise_for_status()
    process.send(r.text)


@dramatiq.actor(actor_name="process", queue_name=QUEUE["process"], max_retries=0)
def process(body):
    d = json.loads(body)
    p = d["prices"]
    aggregate.send(d["symbol"], len(p), sum(p), min(p), max(p))


@dramatiq.actor(actor_name="aggregate", queue_name=QUEUE["aggregate"], max_retries=0)
def aggregate(sym, count, total, lo, hi):
    AGG.add(sym, count, total, lo, hi)


def worker_command(stage):
    procs, threads = WORKERS[stage]
    return [sys.executable, "-m", "dramatiq", MODULE, "-p", str(procs), "-t", str(threads),
            "--worker-shutdown-timeout", str(peerkit.STOP_GRACE_S * 1000 // 2),
            "-Q", QUEUE[stage]]


@contextlib.contextmanager
def amqp():
    """A connection and the channel it last used (a passive declare of a missing queue closes
    its channel), as a two-item list."""
    try:
        conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    except pika.exceptions.AMQPError as e:
        raise peerkit.PeerError(f"cannot connect to RabbitMQ at {peerkit.where(AMQP_URL)}: "
                                f"{peerkit.describe(e)}") from e
    try:
        yield [conn, None]
    finally:
        conn.close()


def channel(box):
    if box[1] is None or box[1].is_closed:
        box[1] = box[0].channel()
    return box[1]


def consumers(box, queue):
    """The consumer count of `queue`, 0 while it does not exist yet."""
    try:
        return channel(box).queue_declare(queue=queue, passive=True).method.consumer_count
    except pika.exceptions.ChannelClosedByBroker:
        return 0


def delete_queues(box):
    for q in QUEUE.values():
        for name in (q, q + ".DQ", q + ".XQ"):
            channel(box).queue_delete(queue=name)


def peer():
    return peerkit.Peer(
        name=NAME, label=f"dramatiq-{dramatiq.__version__}", here=HERE,
        commands={s: worker_command(s) for s in peerkit.STAGES},
        consumers_needed={s: procs for s, (procs, _) in WORKERS.items()},
        queues=QUEUE, agg=AGG, enqueue=fetch.send, amqp=amqp, consumers=consumers,
        delete_queues=delete_queues,
        workers_text=", ".join(f"{s} -p {p} -t {t}" for s, (p, t) in WORKERS.items()))


if __name__ == "__main__":
    peerkit.main(NAME, peer)
