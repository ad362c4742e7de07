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
`dramatiq_peer`; the driver passes its arguments to them in the environment.

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
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

try:
    import dramatiq
    import pika
    import redis
    import requests
    from dramatiq.brokers.rabbitmq import RabbitmqBroker
except ImportError as e:  # the bench reports this line and skips the peer
    print(f"dramatiq peer: missing Python package ({e.name}): "
          "pip install 'dramatiq[rabbitmq]' redis requests", file=sys.stderr)
    sys.exit(3)

NAME = "dramatiq peer"
MODULE = "dramatiq_peer"
HERE = os.path.dirname(os.path.abspath(__file__))
STAGES = ("fetch", "process", "aggregate")
# Worker flags per stage: (processes, threads per process).
WORKERS = {"fetch": (2, 8), "process": (1, 4), "aggregate": (1, 4)}
READY_TIMEOUT_S = 120  # worker start-up
JOB_TIMEOUT_S = 30 * 60  # the timed job
STOP_GRACE_S = 30  # SIGTERM -> SIGKILL
AGG_KEYS = ("docs", "count", "sum", "min", "max", "done")

if __name__ == "__main__":  # the driver: its arguments reach the workers in the environment
    os.environ["PEER_PREFIX"] = sys.argv[3] if len(sys.argv) > 3 else "dramatiq-peer"
    os.environ["PEER_REDIS_URL"] = sys.argv[4] if len(sys.argv) > 4 else "redis://127.0.0.1:6379/"

PREFIX = os.environ.get("PEER_PREFIX", "dramatiq-peer")
REDIS_URL = os.environ.get("PEER_REDIS_URL", "redis://127.0.0.1:6379/")
AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
KEY = f"{PREFIX}:dramatiq:"


def queue_base(prefix):
    """The prefix as a Dramatiq queue name: [a-zA-Z_][a-zA-Z0-9._-]*."""
    base = re.sub(r"[^A-Za-z0-9._-]", ".", prefix)
    return base if re.match(r"[A-Za-z_]", base) else "q" + base


QUEUE = {s: f"{queue_base(PREFIX)}.dramatiq.{s}" for s in STAGES}

broker = RabbitmqBroker(url=AMQP_URL)
dramatiq.set_broker(broker)
_http = requests.Session()  # per process, shared by the worker threads
_rd = redis.Redis.from_url(REDIS_URL)


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
    p = _rd.pipeline()
    p.hincrby(KEY + "docs", sym, 1)
    p.hincrby(KEY + "count", sym, count)
    p.hincrbyfloat(KEY + "sum", sym, total)
    p.zadd(KEY + "min", {sym: lo}, lt=True)
    p.zadd(KEY + "max", {sym: hi}, gt=True)
    p.incr(KEY + "done")
    p.execute()


class PeerError(Exception):
    """A failure reported as one line on stderr."""


def describe(e):
    """An exception on one line, with its type (some, like pika's, have no message)."""
    text = " ".join(str(e).split())
    if isinstance(e, PeerError):
        return text
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def amqp_where():
    """The AMQP URL without its credentials."""
    return re.sub(r"//[^@/]*@", "//", AMQP_URL)


def worker_command(stage):
    procs, threads = WORKERS[stage]
    return [sys.executable, "-m", "dramatiq", MODULE, "-p", str(procs), "-t", str(threads),
            "--worker-shutdown-timeout", str(STOP_GRACE_S * 1000 // 2), "-Q", QUEUE[stage]]


def start_workers(logs):
    """One dramatiq master per stage, each in its own session, output to `logs/<stage>.log`."""
    path = os.pathsep.join(filter(None, [HERE, os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=path, PYTHONDONTWRITEBYTECODE="1")
    workers = {}
    for stage in STAGES:
        with open(os.path.join(logs, f"{stage}.log"), "wb") as log:
            workers[stage] = subprocess.Popen(worker_command(stage), cwd=HERE, env=env,
                                              stdin=subprocess.DEVNULL, stdout=log,
                                              stderr=subprocess.STDOUT, start_new_session=True)
    return workers


def last_line(path):
    with open(path, errors="replace") as f:
        lines = [line.strip() for line in f if line.strip()]
    return lines[-1] if lines else "no output"


def check_alive(workers, logs):
    for stage, w in workers.items():
        if w.poll() is not None:
            log = os.path.join(logs, stage + ".log")
            raise PeerError(f"the {stage} workers exited (code {w.returncode}): {last_line(log)}; "
                            f"log: {log}")


def amqp_connect():
    try:
        return pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    except pika.exceptions.AMQPError as e:
        raise PeerError(f"cannot connect to RabbitMQ at {amqp_where()}: {describe(e)}") from e


def consumers(channel_box, queue):
    """The consumer count of `queue`, 0 while it does not exist yet."""
    conn, ch = channel_box
    if ch is None or ch.is_closed:
        ch = channel_box[1] = conn.channel()
    try:
        return ch.queue_declare(queue=queue, passive=True).method.consumer_count
    except pika.exceptions.ChannelClosedByBroker:
        return 0


def wait_ready(workers, logs):
    """Until every stage queue has one consumer per worker process."""
    box = [amqp_connect(), None]
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            check_alive(workers, logs)
            missing = [s for s in STAGES if consumers(box, QUEUE[s]) < WORKERS[s][0]]
            if not missing:
                return
            if time.monotonic() > deadline:
                queues = ", ".join(QUEUE[s] for s in missing)
                raise PeerError(f"the workers were not consuming after {READY_TIMEOUT_S} s "
                                f"(queues without their consumers: {queues}); logs in {logs}")
            time.sleep(0.1)
    finally:
        box[0].close()


def stop_workers(workers):
    """SIGTERM every master, wait STOP_GRACE_S, then SIGKILL what is left of each session."""
    for w in workers.values():
        if w.poll() is None:
            w.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for w in workers.values():
        try:
            w.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for w in workers.values():
        try:
            os.killpg(w.pid, signal.SIGKILL)  # the session's processes, master or not
        except ProcessLookupError:
            pass
        w.wait()


def delete_queues():
    conn = amqp_connect()
    try:
        ch = conn.channel()
        for q in QUEUE.values():
            for name in (q, q + ".DQ", q + ".XQ"):
                ch.queue_delete(queue=name)
    finally:
        conn.close()


def delete_keys():
    _rd.delete(*(KEY + k for k in AGG_KEYS))


def done():
    return int(_rd.get(KEY + "done") or 0)


def run_job(n, base, workers, logs):
    """Enqueues the N URLs and waits for Redis; returns (seconds, enqueue seconds)."""
    t = time.perf_counter()
    for i in range(n):
        fetch.send(f"{base}{i}.json")
    te = time.perf_counter() - t
    while done() < n:
        if time.perf_counter() - t > JOB_TIMEOUT_S:
            raise PeerError(f"gave up after {JOB_TIMEOUT_S} s: "
                            f"{done()} of {n} documents aggregated")
        check_alive(workers, logs)
        time.sleep(0.01)
    return time.perf_counter() - t, te


def expected(n):
    """Documents per symbol: document i is SYM%03d of i % 50 and has 100 prices."""
    return {f"SYM{k:03d}": n // 50 + (k < n % 50) for k in range(min(n, 50))}


def verify(n):
    """Per symbol: N's documents and 100 prices each, min <= max, sum between them."""
    docs, cnt, tot = (_rd.hgetall(KEY + k) for k in ("docs", "count", "sum"))
    lo = dict(_rd.zrange(KEY + "min", 0, -1, withscores=True))
    hi = dict(_rd.zrange(KEY + "max", 0, -1, withscores=True))
    exp = expected(n)
    if {s.decode() for s in docs} != set(exp) or len(cnt) != len(exp):
        return False
    for sym, d in exp.items():
        k = sym.encode()
        c, s = int(cnt.get(k, 0)), float(tot.get(k, 0))
        if int(docs[k]) != d or c != 100 * d or k not in lo or k not in hi:
            return False
        if not (lo[k] <= hi[k] and c * lo[k] * (1 - 1e-9) <= s <= c * hi[k] * (1 + 1e-9)):
            return False
    return True


def counted():
    return sum(int(v) for v in _rd.hvals(KEY + "docs"))


def clean_up(workers, logs, ok):
    """Stops the workers, deletes the queues and keys; returns what could not be done."""
    stop_workers(workers)
    problems = []
    for step in (delete_queues, delete_keys):
        try:
            step()
        except Exception as e:
            problems.append(f"{step.__name__}: {describe(e)}")
    if ok and not problems:
        shutil.rmtree(logs, ignore_errors=True)
    return problems


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
    base = (sys.argv[2] if len(sys.argv) > 2 else "http://127.0.0.1:8088").rstrip("/") + "/quotes/"
    logs = tempfile.mkdtemp(prefix="dramatiq-peer-")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the workers on the way out
    workers = {}
    try:
        delete_keys()
        workers = start_workers(logs)
        wait_ready(workers, logs)
        dt, te = run_job(n, base, workers, logs)
        out = {"peer": f"dramatiq-{dramatiq.__version__}", "n": n, "seconds": round(dt, 3),
               "tasks_per_s": round(n / dt), "enqueue_seconds": round(te, 3), "counted": counted(),
               "verified": verify(n),
               "workers": ", ".join(f"{s} -p {p} -t {t}" for s, (p, t) in WORKERS.items())}
    except BaseException:
        for p in clean_up(workers, logs, False):
            print(f"{NAME}: warning: cleaning up: {p}", file=sys.stderr)
        print(f"{NAME}: worker logs kept in {logs}", file=sys.stderr)
        raise
    problems = clean_up(workers, logs, True)
    if problems:
        raise PeerError(f"cleaning up: {'; '.join(problems)}")
    print(json.dumps(out))


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # one line for the bench, whatever broke
        print(f"{NAME}: {describe(e)}", file=sys.stderr)
        sys.exit(1)
