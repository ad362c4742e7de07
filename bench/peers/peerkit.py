"""What the broker-based peers (dramatiq_peer.py, celery_peer.py) share: their settings, the
Redis aggregate and its check, the worker processes (start, wait for, stop), the timed job
and the driver that runs it all and prints the one JSON line the bench reads.

A peer script defines its pipeline (actors or tasks that end in `Aggregate.add`) and hands
the driver a `Peer` naming its workers' commands, its queues, how to enqueue one URL, how to
open its AMQP connection, count a queue's consumers on it and delete its queues.
seed.py uses `expected` only.
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

import redis

STAGES = ("fetch", "process", "aggregate")
READY_TIMEOUT_S = 120  # worker start-up
JOB_TIMEOUT_S = 30 * 60  # the timed job
STOP_GRACE_S = 30  # SIGTERM -> SIGKILL
AGG_KEYS = ("docs", "count", "sum", "min", "max", "done")


def settings(default_prefix, driver):
    """(key prefix, Redis URL). The driver (`driver`: the script runs as __main__) takes them
    from its arguments and passes them to its workers in the environment."""
    if driver:
        os.environ["PEER_PREFIX"] = sys.argv[3] if len(sys.argv) > 3 else default_prefix
        os.environ["PEER_REDIS_URL"] = (
            sys.argv[4] if len(sys.argv) > 4 else "redis://127.0.0.1:6379/")
    return (os.environ.get("PEER_PREFIX", default_prefix),
            os.environ.get("PEER_REDIS_URL", "redis://127.0.0.1:6379/"))


def expected(n):
    """Documents per symbol: document i is SYM%03d of i % 50."""
    return {f"SYM{k:03d}": n // 50 + (k < n % 50) for k in range(min(n, 50))}


class Aggregate:
    """The per-symbol aggregate in Redis under `key`: documents, prices, sum, min, max."""

    def __init__(self, redis_url, key):
        self.rd = redis.Redis.from_url(redis_url)
        self.key = key

    def add(self, sym, count, total, lo, hi):
        """One document: one pipeline, with the `done` counter the driver waits on."""
        k = self.key
        p = self.rd.pipeline()
        p.hincrby(k + "docs", sym, 1)
        p.hincrby(k + "count", sym, count)
        p.hincrbyfloat(k + "sum", sym, total)
        p.zadd(k + "min", {sym: lo}, lt=True)
        p.zadd(k + "max", {sym: hi}, gt=True)
        p.incr(k + "done")
        p.execute()

    def done(self):
        return int(self.rd.get(self.key + "done") or 0)

    def counted(self):
        return sum(int(v) for v in self.rd.hvals(self.key + "docs"))

    def delete(self):
        self.rd.delete(*(self.key + k for k in AGG_KEYS))

    def verify(self, n):
        """Per symbol: N's documents and 100 prices each, min <= max, sum between them."""
        rd, key = self.rd, self.key
        docs, cnt, tot = (rd.hgetall(key + k) for k in ("docs", "count", "sum"))
        lo = dict(rd.zrange(key + "min", 0, -1, withscores=True))
        hi = dict(rd.zrange(key + "max", 0, -1, withscores=True))
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


class PeerError(Exception):
    """A failure reported as one line on stderr."""


def describe(e):
    """An exception on one line, with its type (some, like pika's, have no message)."""
    text = " ".join(str(e).split())
    if isinstance(e, PeerError):
        return text
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def where(amqp_url):
    """The AMQP URL without its credentials."""
    return re.sub(r"//[^@/]*@", "//", amqp_url)


class Peer:
    """What the driver needs of one peer.

    name: for messages ("celery peer"); label: its version, for the JSON ("celery-5.4.0");
    here: the scripts' folder (the workers import the script from it); commands: the worker
    command per stage; consumers_needed: consumers per stage queue once the workers are up;
    queues: the queue per stage; workers_text: the worker settings, for the JSON;
    agg: its Aggregate; enqueue(url); amqp(): a context manager giving a connection `c`;
    consumers(c, queue) (0 while the queue does not exist); delete_queues(c).
    """

    def __init__(self, **fields):
        self.__dict__.update(fields)


def start_workers(peer, logs):
    """One worker command per stage, each in its own session, output to `logs/<stage>.log`."""
    path = os.pathsep.join(filter(None, [peer.here, os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=path, PYTHONDONTWRITEBYTECODE="1")
    workers = {}
    for stage in STAGES:
        with open(os.path.join(logs, f"{stage}.log"), "wb") as log:
            workers[stage] = subprocess.Popen(peer.commands[stage], cwd=peer.here, env=env,
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
            raise PeerError(f"the {stage} workers exited (code {w.returncode}): "
                            f"{last_line(log)}; log: {log}")


def wait_ready(peer, workers, logs):
    """Until every stage queue has the consumers its workers open."""
    with peer.amqp() as conn:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            check_alive(workers, logs)
            missing = [s for s in STAGES
                       if peer.consumers(conn, peer.queues[s]) < peer.consumers_needed[s]]
            if not missing:
                return
            if time.monotonic() > deadline:
                queues = ", ".join(peer.queues[s] for s in missing)
                raise PeerError(f"the workers were not consuming after {READY_TIMEOUT_S} s "
                                f"(queues without their consumers: {queues}); logs in {logs}")
            time.sleep(0.1)


def delete_queues(peer):
    with peer.amqp() as conn:
        peer.delete_queues(conn)


def stop_workers(workers):
    """SIGTERM every worker, wait STOP_GRACE_S, then SIGKILL what is left of each session."""
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


def run_job(peer, n, base, workers, logs):
    """Enqueues the N URLs and waits for Redis; returns (seconds, enqueue seconds)."""
    t = time.perf_counter()
    for i in range(n):
        peer.enqueue(f"{base}{i}.json")
    te = time.perf_counter() - t
    while peer.agg.done() < n:
        if time.perf_counter() - t > JOB_TIMEOUT_S:
            raise PeerError(f"gave up after {JOB_TIMEOUT_S} s: "
                            f"{peer.agg.done()} of {n} documents aggregated")
        check_alive(workers, logs)
        time.sleep(0.01)
    return time.perf_counter() - t, te


def clean_up(peer, workers, logs, ok):
    """Stops the workers, deletes the queues and keys; returns what could not be done."""
    stop_workers(workers)
    problems = []
    for name, step in (("delete_queues", lambda: delete_queues(peer)),
                       ("delete_keys", peer.agg.delete)):
        try:
            step()
        except Exception as e:
            problems.append(f"{name}: {describe(e)}")
    if ok and not problems:
        shutil.rmtree(logs, ignore_errors=True)
    return problems


def drive(peer):
    """The whole run: workers up, the timed job, the check, clean-up, the JSON line."""
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
    base = (sys.argv[2] if len(sys.argv) > 2 else "http://127.0.0.1:8088").rstrip("/") + "/quotes/"
    logs = tempfile.mkdtemp(prefix=peer.name.replace(" ", "-") + "-")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the workers on the way out
    workers = {}
    try:
        peer.agg.delete()
        workers = start_workers(peer, logs)
        wait_ready(peer, workers, logs)
        dt, te = run_job(peer, n, base, workers, logs)
        out = {"peer": peer.label, "n": n, "seconds": round(dt, 3),
               "tasks_per_s": round(n / dt), "enqueue_seconds": round(te, 3),
               "counted": peer.agg.counted(), "verified": peer.agg.verify(n),
               "workers": peer.workers_text}
    except BaseException:
        for p in clean_up(peer, workers, logs, False):
            print(f"{peer.name}: warning: cleaning up: {p}", file=sys.stderr)
        print(f"{peer.name}: worker logs kept in {logs}", file=sys.stderr)
        raise
    problems = clean_up(peer, workers, logs, True)
    if problems:
        raise PeerError(f"cleaning up: {'; '.join(problems)}")
    print(json.dumps(out))


def main(name, make_peer):
    """Runs `drive(make_peer())`; any failure is one line on stderr and exit 1."""
    try:
        drive(make_peer())
    except Exception as e:  # one line for the bench, whatever broke
        print(f"{name}: {describe(e)}", file=sys.stderr)
        sys.exit(1)
