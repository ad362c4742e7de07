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
`celery_peer`; the driver passes its arguments to them in the environment.

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
    import celery
    import redis
    import requests
    from celery import Celery, chain
    from kombu import Connection, Exchange, Queue
except ImportError as e:  # the bench reports this line and skips the peer
    print(f"celery peer: missing Python package ({e.name}): "
          "pip install celery==5.4.0 redis requests", file=sys.stderr)
    sys.exit(3)

NAME = "celery peer"
MODULE = "celery_peer"
HERE = os.path.dirname(os.path.abspath(__file__))
STAGES = ("fetch", "process", "aggregate")
# Prefork pool processes per stage (one worker per queue).
WORKERS = {"fetch": 4, "process": 2, "aggregate": 2}
PREFETCH_MULTIPLIER = 4
READY_TIMEOUT_S = 120  # worker start-up
JOB_TIMEOUT_S = 30 * 60  # the timed job
STOP_GRACE_S = 30  # SIGTERM -> SIGKILL
AGG_KEYS = ("docs", "count", "sum", "min", "max", "done")

if __name__ == "__main__":  # the driver: its arguments reach the workers in the environment
    os.environ["PEER_PREFIX"] = sys.argv[3] if len(sys.argv) > 3 else "celery-peer"
    os.environ["PEER_REDIS_URL"] = sys.argv[4] if len(sys.argv) > 4 else "redis://127.0.0.1:6379/"

PREFIX = os.environ.get("PEER_PREFIX", "celery-peer")
REDIS_URL = os.environ.get("PEER_REDIS_URL", "redis://127.0.0.1:6379/")
AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
KEY = f"{PREFIX}:celery:"
BASE = re.sub(r"[^A-Za-z0-9._-]", ".", PREFIX) + ".celery"
QUEUE = {s: f"{BASE}.{s}" for s in STAGES}
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
    task_routes={s: {"queue": QUEUE[s]} for s in STAGES},
    worker_enable_remote_control=False,
    broker_connection_retry_on_startup=True,
)
_http = requests.Session()  # per pool process
_rd = redis.Redis.from_url(REDIS_URL)


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
    sym, count, total, lo, hi = res
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
    return [sys.executable, "-m", "celery", "-A", MODULE, "worker", "-Q", QUEUE[stage],
            "-P", "prefork", "-c", str(WORKERS[stage]), "-n", f"{stage}.{BASE}@%h",
            "-l", "WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat"]


def start_workers(logs):
    """One celery worker per stage, each in its own session, output to `logs/<stage>.log`."""
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
            raise PeerError(f"the {stage} worker exited (code {w.returncode}): {last_line(log)}; "
                            f"log: {log}")


def amqp_connect():
    conn = Connection(AMQP_URL)
    try:
        conn.ensure_connection(max_retries=1)
    except Exception as e:
        conn.release()
        raise PeerError(f"cannot connect to RabbitMQ at {amqp_where()}: {describe(e)}") from e
    return conn


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


def wait_ready(workers, logs):
    """Until every stage queue has its worker's consumer."""
    with amqp_connect() as conn:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            check_alive(workers, logs)
            missing = [s for s in STAGES if consumers(conn, QUEUE[s]) < 1]
            if not missing:
                return
            if time.monotonic() > deadline:
                queues = ", ".join(QUEUE[s] for s in missing)
                raise PeerError(f"the workers were not consuming after {READY_TIMEOUT_S} s "
                                f"(queues without a consumer: {queues}); logs in {logs}")
            time.sleep(0.1)


def stop_workers(workers):
    """SIGTERM (warm shutdown) every worker, wait STOP_GRACE_S, then SIGKILL what is left of
    each session."""
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
            os.killpg(w.pid, signal.SIGKILL)  # the session's processes, main or pool
        except ProcessLookupError:
            pass
        w.wait()


def delete_queues():
    with amqp_connect() as conn:
        ch = conn.channel()
        for q in QUEUE.values():
            ch.queue_delete(queue=q)
        ch.exchange_delete(exchange=BASE)


def delete_keys():
    _rd.delete(*(KEY + k for k in AGG_KEYS))


def done():
    return int(_rd.get(KEY + "done") or 0)


def run_job(n, base, workers, logs):
    """Enqueues the N chains and waits for Redis; returns (seconds, enqueue seconds)."""
    t = time.perf_counter()
    for i in range(n):
        chain(fetch.s(f"{base}{i}.json"), process.s(), aggregate.s()).apply_async()
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
    logs = tempfile.mkdtemp(prefix="celery-peer-")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the workers on the way out
    workers = {}
    try:
        delete_keys()
        workers = start_workers(logs)
        wait_ready(workers, logs)
        dt, te = run_job(n, base, workers, logs)
        out = {"peer": f"celery-{celery.__version__}", "n": n, "seconds": round(dt, 3),
               "tasks_per_s": round(n / dt), "enqueue_seconds": round(te, 3), "counted": counted(),
               "verified": verify(n),
               "workers": ", ".join(f"{s} -c {c}" for s, c in WORKERS.items())}
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
