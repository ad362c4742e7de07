#!/usr/bin/env python3
"""Offline checks of tributary's cluster deploy files, run by scripts/validate-deploy.sh:

  compose TMP       the `cluster` profile of docker-compose.yml (3 RabbitMQ nodes with
                    deploy/rabbitmq/cluster.conf, a Redis Cluster and its init container,
                    the workers given the URL lists), from TMP/compose.resolved.json (the file
                    interpolated with defaults by validate-deploy.sh) and the raw file;
  k8s RENDERED      the overlay deploy/k8s-cluster/ as `kubectl kustomize` renders it (its
                    schemas are checked by validate-deploy.sh): the RabbitmqCluster, the Redis
                    Cluster and the URL lists the Deployments get.

No Docker engine and no cluster: what can only be seen by running them is checked by the
cluster test (tests/tests/e2e/cluster.rs) on the local clusters of scripts/clusters.sh.
"""
import json
import os
import re
import subprocess
import sys
import tempfile
from urllib.parse import urlsplit

import yaml

COMPOSE = "docker-compose.yml"
CLUSTER_CONF = "deploy/rabbitmq/cluster.conf"
COOKIE_VARIABLE = "RABBITMQ_CLUSTER_COOKIE"
WORKERS = ("cluster-fetcher", "cluster-processor", "cluster-aggregator", "cluster-api")
errors = []


def error(where, message):
    errors.append(f"{where}: {message}")


def done():
    """Stops here, listing every error found so far (exit 1), if there is one."""
    if errors:
        sys.exit("\n".join(f"  FAIL {e}" for e in errors))


def url_hosts(where, raw, schemes):
    """The hosts of a comma-separated URL list, each URL checked for its scheme."""
    hosts = []
    for url in (u.strip() for u in str(raw or "").split(",")):
        parts = urlsplit(url)
        if parts.scheme not in schemes or not parts.hostname:
            error(where, f"{parts.scheme}://{parts.hostname}... is not a {'/'.join(schemes)} URL with a host")
        else:
            hosts.append(parts.hostname)
    return hosts


# ---------------------------------------------------------------------------------- compose

def profiles(service):
    return set(service.get("profiles", []))


def depends(service):
    d = service.get("depends_on", {})
    return d if isinstance(d, dict) else {name: {} for name in d}


def check_profiles(services):
    """`docker compose config` with and without the profile: every dependency is enabled
    with its dependent, and no two services publish the same host port."""
    for enabled in (set(), {"cluster"}):
        on = {n for n, s in services.items() if not profiles(s) or profiles(s) & enabled}
        label = f"profile {'/'.join(sorted(enabled))}" if enabled else "no profile"
        for name in sorted(on):
            for dep in depends(services[name]):
                if dep not in services:
                    error(COMPOSE, f"services.{name} depends on {dep}, which is not defined")
                elif dep not in on:
                    error(COMPOSE, f"with {label}, services.{name} depends on {dep}, which is disabled")
    published = {}
    for name, service in services.items():
        for port in service.get("ports", []):
            host = str(port).rsplit(":", 1)[0]
            if host in published:
                error(COMPOSE, f"services.{name} and {published[host]} both publish {host}")
            published[host] = name


def conf_settings(path):
    settings = {}
    with open(path) as f:
        for line in f:
            line = line.split("#")[0].strip()
            if line:
                key, _, value = line.partition("=")
                settings[key.strip()] = value.strip()
    return settings


def refuses_no_cookie(name, service):
    """Runs the node's entrypoint with a stub docker-entrypoint.sh: without a cookie it must
    exit non-zero naming the variable, with one it must hand over to the image's entrypoint."""
    argv = list(service.get("entrypoint") or []) + list(service.get("command") or [])
    with tempfile.TemporaryDirectory() as stub:
        path = os.path.join(stub, "docker-entrypoint.sh")
        with open(path, "w") as f:
            f.write('#!/bin/sh\necho "handed over: $*"\n')
        os.chmod(path, 0o755)
        for cookie, ok in (("", False), ("a-shared-secret", True)):
            env = {"PATH": f"{stub}:/usr/bin:/bin", "RABBITMQ_ERLANG_COOKIE": cookie}
            try:
                run = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=10)
            except (OSError, subprocess.TimeoutExpired) as e:
                error(f"{COMPOSE}: services.{name}", f"entrypoint does not run: {e}")
                return
            if ok and (run.returncode != 0 or "handed over: rabbitmq-server" not in run.stdout):
                error(f"{COMPOSE}: services.{name}", f"with a cookie, the entrypoint does not start rabbitmq-server: {run.stderr.strip()}")
            if not ok and (run.returncode == 0 or COOKIE_VARIABLE not in run.stderr):
                error(f"{COMPOSE}: services.{name}", f"starts without a cookie (it must exit naming {COOKIE_VARIABLE})")


def check_rabbitmq_nodes(services, raw):
    """The nodes mounting cluster.conf: at least 3, named as its classic config lists them,
    quorum queues by default, one cookie from the required variable."""
    nodes = {n: s for n, s in services.items()
             if any(CLUSTER_CONF.lstrip(".") in str(v) for v in s.get("volumes", []))}
    if len(nodes) < 3:
        error(COMPOSE, f"{len(nodes)} services mount {CLUSTER_CONF}, not 3 or more RabbitMQ nodes")
    settings = conf_settings(CLUSTER_CONF)
    backend = settings.get("cluster_formation.peer_discovery_backend")
    if backend not in ("classic_config", "rabbit_peer_discovery_classic_config"):
        error(CLUSTER_CONF, f"peer discovery backend is {backend}, not classic_config")
    listed = {v for k, v in settings.items() if k.startswith("cluster_formation.classic_config.nodes.")}
    named = {f"rabbit@{s.get('hostname', n)}" for n, s in nodes.items()}
    if listed != named:
        error(CLUSTER_CONF, f"lists nodes {sorted(listed)}, compose runs {sorted(named)}")
    if settings.get("default_queue_type") != "quorum":
        error(CLUSTER_CONF, "default_queue_type is not quorum")
    for name, service in nodes.items():
        at = f"{COMPOSE}: services.{name}"
        if profiles(service) != {"cluster"}:
            error(at, "is not (only) in the cluster profile")
        if not any(str(v).endswith(":ro") and ":/etc/rabbitmq/conf.d/" in str(v) for v in service.get("volumes", [])):
            error(at, f"does not mount {CLUSTER_CONF} read-only into /etc/rabbitmq/conf.d/")
        cookie = raw["services"][name].get("environment", {}).get("RABBITMQ_ERLANG_COOKIE", "")
        if not re.fullmatch(r"\$\{" + COOKIE_VARIABLE + r"(:-)?\}", str(cookie)):
            error(at, f"RABBITMQ_ERLANG_COOKIE is not ${{{COOKIE_VARIABLE}}}")
        if not service.get("healthcheck", {}).get("test"):
            error(at, "has no healthcheck")
        refuses_no_cookie(name, service)
    return {n: s.get("hostname", n) for n, s in nodes.items()}


def cluster_create(command):
    """The node addresses and --cluster-replicas of a `redis-cli --cluster create` command."""
    words = " ".join(command).split()
    if "create" not in words:
        return [], None
    addresses = []
    for word in words[words.index("create") + 1:]:
        if word.startswith("-"):
            break
        addresses.append(word)
    replicas = re.search(r"--cluster-replicas\s+(\d+)", " ".join(words))
    return addresses, int(replicas.group(1)) if replicas else 0


def check_redis_cluster(services):
    nodes = {n: s for n, s in services.items()
             if "--cluster-enabled yes" in " ".join(map(str, s.get("command") or []))}
    inits = {n: s for n, s in services.items()
             if "--cluster create" in " ".join(map(str, s.get("command") or []))}
    if len(inits) != 1:
        error(COMPOSE, f"{len(inits)} services run `redis-cli --cluster create`, not one")
        return {}, 0, None
    init, service = next(iter(inits.items()))
    addresses, replicas = cluster_create(service["command"])
    hosts = {a.rsplit(":", 1)[0] for a in addresses}
    named = {s.get("hostname", n) for n, s in nodes.items()}
    at = f"{COMPOSE}: services.{init}"
    if hosts != named:
        error(at, f"creates the cluster of {sorted(hosts)}, compose runs Redis nodes {sorted(named)}")
    if replicas < 1 or len(addresses) % (replicas + 1) or len(addresses) // (replicas + 1) < 3:
        error(at, f"{len(addresses)} nodes with {replicas} replicas each is not 3+ masters with a replica")
    for node in nodes:
        if depends(service).get(node, {}).get("condition") != "service_healthy":
            error(at, f"does not wait for {node} to be healthy")
        if not nodes[node].get("healthcheck", {}).get("test"):
            error(f"{COMPOSE}: services.{node}", "has no healthcheck")
    return {n: s.get("hostname", n) for n, s in nodes.items()}, replicas, init


def check_cluster_workers(services, rabbitmq, redis, replicas, init):
    for name in WORKERS:
        at = f"{COMPOSE}: services.{name}"
        service = services.get(name)
        if service is None:
            error(COMPOSE, f"no `{name}` service in the cluster profile")
            continue
        if profiles(service) != {"cluster"}:
            error(at, "is not (only) in the cluster profile")
        env = service.get("environment", {})
        amqp = url_hosts(at, env.get("AMQP_URL"), ("amqp", "amqps"))
        if sorted(amqp) != sorted(rabbitmq.values()):
            error(at, f"AMQP_URL names {amqp}, not every RabbitMQ node {sorted(rabbitmq.values())}")
        seeds = url_hosts(at, env.get("REDIS_URL"), ("redis", "rediss"))
        if not seeds or not set(seeds) <= set(redis.values()):
            error(at, f"REDIS_URL seeds {seeds} are not Redis Cluster nodes {sorted(redis.values())}")
        if env.get("TRIBUTARY_QUEUE_TYPE") != "quorum":
            error(at, "TRIBUTARY_QUEUE_TYPE is not quorum")
        if str(env.get("TRIBUTARY_REDIS_CLUSTER")).lower() not in ("true", "1"):
            error(at, "TRIBUTARY_REDIS_CLUSTER is not true")
        wait = str(env.get("TRIBUTARY_REDIS_WAIT_REPLICAS", "0"))
        if not wait.isdigit() or not 1 <= int(wait) <= replicas:
            error(at, f"TRIBUTARY_REDIS_WAIT_REPLICAS {wait} is not 1..{replicas} (the replicas per master)")
        wanted = {node: "service_healthy" for node in rabbitmq}
        wanted[init] = "service_completed_successfully"
        for dep, condition in wanted.items():
            if depends(service).get(dep, {}).get("condition") != condition:
                error(at, f"does not wait for {dep} ({condition})")


def check_compose(tmp):
    with open(os.path.join(tmp, "compose.resolved.json")) as f:
        services = json.load(f)["services"]
    with open(COMPOSE) as f:
        raw = yaml.safe_load(f)
    check_profiles(services)
    rabbitmq = check_rabbitmq_nodes(services, raw)
    redis, replicas, init = check_redis_cluster(services)
    done()
    check_cluster_workers(services, rabbitmq, redis, replicas, init)
    done()


# ------------------------------------------------------------------------------ Kubernetes

OVERLAY = "deploy/k8s-cluster"
REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def k8s_rabbitmq(kinds):
    """The RabbitmqCluster: an odd number of 3+ nodes, quorum queues by default. Returns the
    DNS names of its pods (operator naming) and its default user's Secret."""
    clusters = kinds.get("RabbitmqCluster", {})
    if len(clusters) != 1:
        error(OVERLAY, f"{len(clusters)} RabbitmqCluster resources, not one")
        return [], None
    name, spec = next((n, d["spec"]) for n, d in clusters.items())
    replicas = spec.get("replicas", 1)
    if replicas < 3 or replicas % 2 == 0:
        error(f"{OVERLAY}: RabbitmqCluster/{name}", f"{replicas} replicas: not an odd number of 3 or more")
    config = spec.get("rabbitmq", {}).get("additionalConfig", "")
    if not re.search(r"^\s*default_queue_type\s*=\s*quorum\s*$", config, re.M):
        error(f"{OVERLAY}: RabbitmqCluster/{name}", "additionalConfig does not set default_queue_type = quorum")
    return [f"{name}-server-{i}.{name}-nodes" for i in range(replicas)], f"{name}-default-user"


def k8s_redis(kinds):
    """The Redis Cluster's StatefulSet, headless Service and create Job agree. Returns the DNS
    names of its pods and the replicas per master."""
    nodes = [d for d in kinds.get("StatefulSet", {}).values()
             if "--cluster-enabled" in d["spec"]["template"]["spec"]["containers"][0].get("args", [])]
    jobs = [d for d in kinds.get("Job", {}).values()
            if "--cluster create" in " ".join(d["spec"]["template"]["spec"]["containers"][0].get("command", []))]
    if len(nodes) != 1 or len(jobs) != 1:
        error(OVERLAY, f"{len(nodes)} Redis Cluster StatefulSets and {len(jobs)} create Jobs, not one each")
        return [], 0
    sts, job = nodes[0], jobs[0]
    service = kinds.get("Service", {}).get(sts["spec"]["serviceName"], {}).get("spec", {})
    if service.get("clusterIP") != "None" or service.get("publishNotReadyAddresses") is not True:
        error(f"{OVERLAY}: StatefulSet/{sts['metadata']['name']}", "its serviceName is not a headless Service publishing not-ready addresses")
    names = [f"{sts['metadata']['name']}-{i}.{sts['spec']['serviceName']}" for i in range(sts["spec"]["replicas"])]
    addresses, replicas = cluster_create(job["spec"]["template"]["spec"]["containers"][0]["command"])
    at = f"{OVERLAY}: Job/{job['metadata']['name']}"
    if sorted(a.rsplit(":", 1)[0] for a in addresses) != sorted(names):
        error(at, f"creates the cluster of {addresses}, the StatefulSet runs {names}")
    if replicas < 1 or len(addresses) % (replicas + 1) or len(addresses) // (replicas + 1) < 3:
        error(at, f"{len(addresses)} nodes with {replicas} replicas each is not 3+ masters with a replica")
    return names, replicas


def k8s_env_refs(at, env):
    """$(VAR) in an env value expands only VARs defined before it; anything else stays literal."""
    defined = set()
    for entry in env:
        for ref in sorted(set(REF.findall(str(entry.get("value", ""))))):
            if ref not in defined:
                error(at, f"{entry['name']} refers to $({ref}), which is not defined before it")
        defined.add(entry["name"])


def k8s_workers(kinds, rabbitmq, secret, redis, replicas):
    data = kinds.get("ConfigMap", {}).get("tributary", {}).get("data", {})
    if data.get("TRIBUTARY_QUEUE_TYPE") != "quorum":
        error(f"{OVERLAY}: ConfigMap/tributary", "TRIBUTARY_QUEUE_TYPE is not quorum")
    if str(data.get("TRIBUTARY_REDIS_CLUSTER")).lower() not in ("true", "1"):
        error(f"{OVERLAY}: ConfigMap/tributary", "TRIBUTARY_REDIS_CLUSTER is not true")
    wait = str(data.get("TRIBUTARY_REDIS_WAIT_REPLICAS", "0"))
    if not wait.isdigit() or not 1 <= int(wait) <= replicas:
        error(f"{OVERLAY}: ConfigMap/tributary", f"TRIBUTARY_REDIS_WAIT_REPLICAS {wait} is not 1..{replicas}")
    secrets = {secret, "tributary", "tributary-redis"}
    for name, deployment in kinds.get("Deployment", {}).items():
        for c in deployment["spec"]["template"]["spec"]["containers"]:
            at = f"{OVERLAY}: Deployment/{name} container {c['name']}"
            env = c.get("env", [])
            values = {e["name"]: e.get("value") for e in env}
            k8s_env_refs(at, env)
            for e in env:
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref and ref["name"] not in secrets:
                    error(at, f"{e['name']} refers to secret {ref['name']}, not one of {sorted(secrets)}")
            for key in ("AMQP_URL", "REDIS_URL"):
                for url in str(values.get(key) or "").split(","):
                    password = urlsplit(url).password
                    if password and not REF.fullmatch(password):
                        error(at, f"{key} holds a literal password: take it from a Secret, $(VAR)")
            amqp = url_hosts(at, values.get("AMQP_URL"), ("amqp", "amqps"))
            if sorted(amqp) != sorted(rabbitmq):
                error(at, f"AMQP_URL names {amqp}, not every RabbitMQ pod {rabbitmq}")
            seeds = url_hosts(at, values.get("REDIS_URL"), ("redis", "rediss"))
            if not seeds or not set(seeds) <= set(redis):
                error(at, f"REDIS_URL seeds {seeds} are not Redis Cluster pods {redis}")


def check_k8s(rendered):
    with open(rendered) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    kinds = {}
    for doc in docs:
        kinds.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    rabbitmq, secret = k8s_rabbitmq(kinds)
    redis, replicas = k8s_redis(kinds)
    done()
    if "Deployment" in kinds:
        k8s_workers(kinds, rabbitmq, secret, redis, replicas)
    else:
        print("  note: not rendered (no kubectl): the Deployments' URL lists are not checked")
    done()


if __name__ == "__main__":
    {"compose": check_compose, "k8s": check_k8s}[sys.argv[1]](sys.argv[2])
