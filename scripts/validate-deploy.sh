#!/usr/bin/env bash
# Offline checks of the deploy files: docker-compose.yml (with its `cluster` profile),
# deploy/Dockerfile (+ .dockerignore), deploy/rabbitmq/, the Kubernetes base deploy/k8s/ and
# the overlay deploy/k8s-cluster/. No network, no Docker engine, no cluster: schemas come
# from pip packages (check-jsonschema ships the Compose Specification schema,
# kubernetes-validate the Kubernetes OpenAPI schemas, dockerfile BuildKit's parser) and from
# deploy/schemas/ (KEDA's CRDs, the RabbitMQ operator's RabbitmqCluster); the cluster shape's
# cross-checks are in scripts/validate-deploy-cluster.py. Exits non-zero on the first
# invalid file.
#
#   python3 -m pip install check-jsonschema kubernetes-validate dockerfile   # once (.ci/run)
#   scripts/validate-deploy.sh
#
# That definitions.json declares exactly what the binaries declare is checked by
# `cargo test -p tributary-tests --test e2e deploy::` (it needs the Rust topology code).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Kubernetes versions to validate the manifests against: the oldest supported, the newest packaged.
K8S_VERSIONS="${K8S_VERSIONS:-1.29.0 1.37.0}"

step() { printf -- '-- %s\n' "$*"; }
fail() { printf 'validate-deploy: %s\n' "$*" >&2; exit 1; }

command -v check-jsonschema >/dev/null ||
    fail "check-jsonschema not found: python3 -m pip install check-jsonschema"
python3 -c 'import kubernetes_validate, dockerfile, yaml, jsonschema' 2>/dev/null ||
    fail "missing Python packages: python3 -m pip install kubernetes-validate dockerfile"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

cat >"$tmp/check.py" <<'PY'
"""The checks that need more than a schema: interpolation, cross-references, settings."""
import glob
import json
import os
import re
import subprocess
import sys

import dockerfile
import jsonschema
import kubernetes_validate
import yaml

TMP = sys.argv[2]
WORKSPACE_BINARIES = ["producer", "fetcher-worker", "processor-worker", "aggregator"]
SHUTDOWN_TIMEOUT_S = 25  # the workers' default --shutdown-timeout
SECRET_KEYS = {"AMQP_URL", "REDIS_URL", "TRIBUTARY_API_TOKEN"}
errors = []


def error(where, message):
    errors.append(f"{where}: {message}")


def done():
    if errors:
        for e in errors:
            print(f"  FAIL {e}", file=sys.stderr)
        sys.exit(1)


def load_yaml_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def seconds(duration):
    """Compose / Go durations: 40s, 1m30s, 500ms."""
    text = str(duration)
    if not re.fullmatch(r"((\d+(\.\d+)?)(ms|us|ns|h|m|s))+", text):
        raise ValueError(f"not a duration: {duration!r}")
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6, "ns": 1e-9}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|us|ns|h|m|s)", text))


def memory_bytes(quantity):
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|K|M|G)?", str(quantity))
    if not m:
        raise ValueError(f"not a memory quantity: {quantity!r}")
    factor = {None: 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "K": 1e3, "M": 1e6, "G": 1e9}
    return int(m.group(1)) * factor[m.group(2)]


# ---------------------------------------------------------------------------------- Dockerfile

def dockerfile_binaries():
    """The binaries the image's build stage copies out, from BuildKit's own parser."""
    try:
        commands = dockerfile.parse_file("deploy/Dockerfile")
    except dockerfile.GoParseError as e:
        error("deploy/Dockerfile", f"does not parse: {e}")
        return set(), ()
    return copied_binaries(commands), commands


def copied_binaries(commands):
    found = set()
    for c in commands:
        if c.cmd == "RUN":
            found.update(re.findall(r"target/release/([A-Za-z0-9_-]+)", " ".join(c.value)))
    return found


INSTRUCTIONS = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT",
                "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"}


def check_dockerfile():
    where = "deploy/Dockerfile"
    binaries, commands = dockerfile_binaries()
    if not commands:
        return
    stages, current, users = {}, None, {}
    for c in commands:
        at = f"{where}:{c.start_line}"
        if c.cmd not in INSTRUCTIONS:
            error(at, f"unknown instruction {c.cmd}")
        elif c.cmd in ("COPY", "ADD") and len(c.value) < 2:
            error(at, f"{c.cmd} needs a source and a destination")
        elif c.cmd in ("FROM", "RUN", "USER", "WORKDIR") and not c.value:
            error(at, f"{c.cmd} without an argument")
        if c.cmd == "FROM":
            parts = list(c.value)
            name = parts[2].lower() if len(parts) >= 3 and parts[1].upper() == "AS" else f"#{len(stages)}"
            current = name
            stages[name] = {"from": parts[0], "run": [], "copy": []}
        elif current is None:
            continue
        elif c.cmd == "RUN":
            stages[current]["run"].append(" ".join(c.value))
        elif c.cmd == "COPY":
            stages[current]["copy"].append((c.flags, c.value))
        elif c.cmd == "USER":
            users[current] = c.value[0]
    for needed, command in [("planner", "cargo chef prepare"), ("cook", "cargo chef cook"),
                            ("build", "cargo build --release")]:
        if needed not in stages:
            error(where, f"no `{needed}` stage")
        elif not any(command in r for r in stages[needed]["run"]):
            error(where, f"stage `{needed}` does not run `{command}`")
    final = list(stages)[-1]
    base = stages[final]["from"]
    if not (base.startswith("gcr.io/distroless/cc-debian12:nonroot") or "slim" in base):
        error(where, f"runtime stage is {base}, not distroless cc-debian12:nonroot or debian-slim")
    user = users.get(final)
    if user is None or user.split(":")[0] in ("0", "root"):
        error(where, f"runtime stage runs as {user or 'root (no USER)'}")
    elif not user.split(":")[0].isdigit():
        error(where, f"USER {user} is not numeric (Kubernetes cannot verify runAsNonRoot)")
    if not any(("/usr/local/bin" in " ".join(v)) for _, v in stages[final]["copy"]):
        error(where, "runtime stage copies nothing into /usr/local/bin")
    cook_and_build = " ".join(stages.get("cook", {}).get("run", []) + stages.get("build", {}).get("run", []))
    for binary in WORKSPACE_BINARIES:
        if binary not in binaries:
            error(where, f"binary {binary} is not copied into the image")
        if f"-p {binary}" not in cook_and_build:
            error(where, f"package {binary} is not cooked and built (`-p {binary}`)")
    # Every binary target of those packages, so a new one is not forgotten.
    try:
        meta = json.loads(subprocess.run(
            ["cargo", "metadata", "--no-deps", "--offline", "--format-version", "1"],
            check=True, capture_output=True, text=True).stdout)
        for package in meta["packages"]:
            if package["name"] in WORKSPACE_BINARIES:
                for target in package["targets"]:
                    if "bin" in target["kind"] and target["name"] not in binaries:
                        error(where, f"binary {target['name']} of {package['name']} is not in the image")
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"  note: cargo metadata unavailable ({e}); binary list not cross-checked")
    with open(".dockerignore") as f:
        ignored = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    for needed in ["**/target/", ".git/"]:
        if needed not in ignored:
            error(".dockerignore", f"does not exclude {needed}")
    for kept in ["Cargo.toml", "Cargo.lock", "shared/", "producer/", "tests/"]:
        if kept in ignored or kept.rstrip("/") in ignored:
            error(".dockerignore", f"excludes {kept}, which the build needs")
    done()


# --------------------------------------------------------------------------------- Compose

VAR = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])((?:[^{}$]|\$\$)*))?\}|([A-Za-z_][A-Za-z0-9_]*))")


def interpolate(value, env, where):
    """Compose's variable substitution ($$, $VAR, ${VAR}, ${VAR:-d}, ${VAR-d}, ${VAR:?e},
    ${VAR?e}, ${VAR:+a}, ${VAR+a}); nested expressions are not used in our file."""
    if isinstance(value, dict):
        return {k: interpolate(v, env, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env, f"{where}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def one(m):
        dollar, name, op, arg, bare = m.groups()
        if dollar:
            return "$"
        name = name or bare
        is_set, val = name in env, env.get(name, "")
        nonempty = is_set and val != ""
        if op in (None,):
            return val
        if op == ":-":
            return val if nonempty else arg
        if op == "-":
            return val if is_set else arg
        if op == ":?":
            if not nonempty:
                raise ValueError(f"{where}: required variable {name} is missing: {arg}")
            return val
        if op == "?":
            if not is_set:
                raise ValueError(f"{where}: required variable {name} is missing: {arg}")
            return val
        if op == ":+":
            return arg if nonempty else ""
        if op == "+":
            return arg if is_set else ""
        raise ValueError(f"{where}: unsupported interpolation {m.group(0)}")

    out = VAR.sub(one, value)
    if "${" in out:
        raise ValueError(f"{where}: unsupported (nested?) interpolation in {value!r}")
    return out


def check_compose():
    where = "docker-compose.yml"
    with open(where) as f:
        raw = yaml.safe_load(f)
    # With nothing set, every default must give a valid file (and no `:?` may fire, or
    # `docker compose up -d rabbitmq redis` would fail without it).
    try:
        compose = interpolate(raw, {}, "")
    except ValueError as e:
        error(where, str(e))
        done()
    compose = {k: v for k, v in compose.items() if not k.startswith("x-")}
    with open(os.path.join(TMP, "compose.resolved.json"), "w") as f:
        json.dump(compose, f, indent=1)

    services = compose.get("services", {})
    for name in ("rabbitmq", "redis"):
        if name not in services:
            error(where, f"no `{name}` service (`docker compose up -d rabbitmq redis`)")
        elif not services[name].get("healthcheck", {}).get("test"):
            error(where, f"service {name} has no healthcheck")
    binaries, _ = dockerfile_binaries()
    tributary = {n: s for n, s in services.items()
                 if s.get("build") or s.get("image", "").startswith("tributary")}
    for name in ("fetcher", "processor", "aggregator", "api"):
        if name not in tributary:
            error(where, f"no `{name}` service from the tributary image")
    for name, service in tributary.items():
        at = f"{where}: services.{name}"
        build = service.get("build")
        if build:
            if isinstance(build, str):
                build = {"context": build}
            path = os.path.join(build.get("context", "."), build.get("dockerfile", "Dockerfile"))
            if not os.path.isfile(path):
                error(at, f"build dockerfile {path} does not exist")
        depends = service.get("depends_on", {})
        # The `cluster` profile's services wait for the cluster's nodes instead
        # (scripts/validate-deploy-cluster.py checks them).
        for dep in () if "cluster" in service.get("profiles", []) else ("rabbitmq", "redis"):
            condition = depends.get(dep, {}).get("condition") if isinstance(depends, dict) else None
            if condition != "service_healthy":
                error(at, f"does not wait for {dep} to be healthy (depends_on condition)")
        try:
            grace = seconds(service.get("stop_grace_period", "10s"))
            if grace <= SHUTDOWN_TIMEOUT_S:
                error(at, f"stop_grace_period {grace:g}s is not above the {SHUTDOWN_TIMEOUT_S}s shutdown timeout")
        except ValueError as e:
            error(at, str(e))
        env = service.get("environment", {})
        if isinstance(env, list):
            env = dict(e.split("=", 1) if "=" in e else (e, None) for e in env)
        for key in ("AMQP_URL", "REDIS_URL", "TRIBUTARY_NAMESPACE"):
            if not env.get(key):
                error(at, f"environment has no {key}")
        argv = (service.get("entrypoint") or []) + (service.get("command") or [])
        binary = os.path.basename(argv[0]) if argv else None
        if binary not in binaries:
            error(at, f"runs {argv[:1]}, not one of the image's binaries {sorted(binaries)}")
        replicas = service.get("deploy", {}).get("replicas")
        if replicas is not None and not str(replicas).isdigit():
            error(at, f"deploy.replicas {replicas!r} is not a whole number")
    for name in ("api", "cluster-api"):
        api = tributary.get(name, {})
        api_env = api.get("environment", {})
        if name == "api" or api:
            if "TRIBUTARY_API_TOKEN" not in api_env:
                error(where, f"services.{name} gets no TRIBUTARY_API_TOKEN")
            elif api_env["TRIBUTARY_API_TOKEN"] not in (None, ""):
                error(where, f"services.{name} has a literal TRIBUTARY_API_TOKEN (pass it from the environment)")
        for port in api.get("ports", []):
            if not str(port).startswith("127.0.0.1:"):
                error(where, f"services.{name} publishes {port} beyond 127.0.0.1")
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith((".", "/")) and not os.path.exists(source):
                error(where, f"services.{name} mounts {source}, which does not exist")
    done()


# -------------------------------------------------------------------------------- RabbitMQ

def check_rabbitmq():
    for where in ("deploy/rabbitmq/definitions.json", "deploy/rabbitmq/definitions.quorum.json"):
        check_definitions(where)
    with open("deploy/rabbitmq/rabbitmq.conf") as f:
        conf = [line.split("#")[0].strip() for line in f]
    if not any(re.fullmatch(r"load_definitions\s*=\s*\S+", line) for line in conf):
        error("deploy/rabbitmq/rabbitmq.conf", "does not set load_definitions")
    done()


def check_definitions(where):
    with open(where) as f:
        defs = json.load(f)
    vhosts = {v["name"] for v in defs.get("vhosts", [])}
    exchanges = {(e["vhost"], e["name"]) for e in defs.get("exchanges", [])}
    queues = {(q["vhost"], q["name"]) for q in defs.get("queues", [])}
    for kind in ("users", "permissions"):
        if defs.get(kind):
            error(where, f"carries {kind}: credentials stay out of the repository")
    for e in defs.get("exchanges", []) + defs.get("queues", []) + defs.get("bindings", []):
        if e["vhost"] not in vhosts:
            error(where, f"{e.get('name', e.get('destination'))} is in undeclared vhost {e['vhost']}")
    for b in defs.get("bindings", []):
        if (b["vhost"], b["source"]) not in exchanges:
            error(where, f"binding from undeclared exchange {b['source']}")
        if b["destination_type"] != "queue" or (b["vhost"], b["destination"]) not in queues:
            error(where, f"binding to undeclared queue {b['destination']}")
    bound = {(b["vhost"], b["destination"]) for b in defs.get("bindings", [])}
    for q in sorted(queues - bound):
        error(where, f"queue {q[1]} is not bound")


# ------------------------------------------------------------------------------ Kubernetes

K8S = "deploy/k8s"
KEDA_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "deploy/schemas/keda/scaledobject.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "deploy/schemas/keda/triggerauthentication.json",
}
CRD_SCHEMAS = {**KEDA_SCHEMAS, ("rabbitmq.com/v1beta1", "RabbitmqCluster"): "deploy/schemas/rabbitmq/rabbitmqcluster.json"}


def kustomization():
    with open(f"{K8S}/kustomization.yaml") as f:
        return yaml.safe_load(f)


def manifests():
    """(file, document) for every resource the kustomization lists."""
    out = []
    for resource in kustomization().get("resources", []):
        for doc in load_yaml_docs(os.path.join(K8S, resource)):
            out.append((os.path.join(K8S, resource), doc))
    return out


def check_kustomization():
    where = f"{K8S}/kustomization.yaml"
    k = kustomization()
    if k.get("kind") != "Kustomization":
        error(where, "is not a Kustomization")
    listed = k.get("resources", [])
    for resource in listed:
        if not os.path.isfile(os.path.join(K8S, resource)):
            error(where, f"lists {resource}, which does not exist")
    present = {os.path.relpath(p, K8S) for p in glob.glob(f"{K8S}/**/*.yaml", recursive=True)}
    for orphan in sorted(present - set(listed) - {"kustomization.yaml"}):
        error(where, f"does not list {orphan}")
    done()
    keda = {}
    for path, doc in manifests():
        key = (doc.get("apiVersion"), doc.get("kind"))
        if key in KEDA_SCHEMAS:
            if len(load_yaml_docs(path)) != 1:
                error(path, "KEDA objects go one per file (check-jsonschema reads one document)")
            keda.setdefault(KEDA_SCHEMAS[key], []).append(path)
    with open(os.path.join(TMP, "keda.txt"), "w") as f:
        for schema, paths in sorted(keda.items()):
            f.write(f"{schema} {' '.join(paths)}\n")
    done()


def validate_documents(docs, versions):
    """Built-in kinds against the Kubernetes schemas (strict); KEDA against deploy/schemas."""
    for where, doc in docs:
        key = (doc.get("apiVersion"), doc.get("kind"))
        name = f"{where}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        if key in CRD_SCHEMAS:
            with open(CRD_SCHEMAS[key]) as f:
                schema = json.load(f)
            for e in jsonschema.Draft7Validator(schema).iter_errors(doc):
                error(name, f"{'.'.join(map(str, e.absolute_path))}: {e.message}")
            continue
        for version in versions:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                error(name, f"unknown kind {key} (not built into Kubernetes {version}, not KEDA)")
                break
            except kubernetes_validate.ValidationError as e:
                error(name, f"Kubernetes {version}: {'.'.join(map(str, e.path))}: {e.message}")


def check_k8s_schemas():
    versions = os.environ.get("K8S_VERSIONS", "1.29.0 1.37.0").split()
    validate_documents(manifests(), versions)
    rendered = os.path.join(TMP, "rendered.yaml")
    if os.path.exists(rendered):
        validate_documents([("kustomize build", d) for d in load_yaml_docs(rendered)], versions)
    done()


def check_k8s_cluster_schemas():
    """The overlay as kubectl rendered it, else its own files (no base, no patches)."""
    rendered = os.path.join(TMP, "cluster.yaml")
    if not os.path.exists(rendered):
        print("  note: kubectl not installed: the overlay's own files only (no base, no patches)")
        own = [r for r in yaml.safe_load(open("deploy/k8s-cluster/kustomization.yaml"))["resources"] if r.endswith(".yaml")]
        with open(rendered, "w") as f:
            f.write("".join(f"---\n{open(os.path.join('deploy/k8s-cluster', r)).read()}" for r in own))
    validate_documents([("deploy/k8s-cluster", d) for d in load_yaml_docs(rendered)],
                       os.environ.get("K8S_VERSIONS", "1.29.0 1.37.0").split())
    done()


def check_k8s_references():
    binaries, _ = dockerfile_binaries()
    docs = manifests()
    by_kind = {}
    for where, doc in docs:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = (where, doc)
    if "Secret" in by_kind:
        error(K8S, "holds a Secret: reference it, keep its values out of the repository")
    configmaps = by_kind.get("ConfigMap", {})
    namespace = None
    for _, cm in configmaps.values():
        namespace = cm.get("data", {}).get("TRIBUTARY_NAMESPACE", namespace)
    with open("deploy/rabbitmq/definitions.json") as f:
        queues = {q["name"] for q in json.load(f)["queues"]}

    deployments = by_kind.get("Deployment", {})
    for name, (where, d) in deployments.items():
        at = f"{where}: Deployment/{name}"
        spec, pod = d["spec"], d["spec"]["template"]["spec"]
        labels = d["spec"]["template"]["metadata"].get("labels", {})
        selector = spec["selector"].get("matchLabels", {})
        if not selector or any(labels.get(k) != v for k, v in selector.items()):
            error(at, "selector does not match the pod template's labels")
        if pod.get("terminationGracePeriodSeconds", 30) <= SHUTDOWN_TIMEOUT_S:
            error(at, f"terminationGracePeriodSeconds is not above the {SHUTDOWN_TIMEOUT_S}s shutdown timeout")
        psc = pod.get("securityContext", {})
        if psc.get("runAsNonRoot") is not True or psc.get("runAsUser", 1) == 0:
            error(at, "pod securityContext does not enforce a non-root user")
        for c in pod["containers"]:
            cat = f"{at} container {c['name']}"
            sc = c.get("securityContext", {})
            if sc.get("allowPrivilegeEscalation") is not False:
                error(cat, "allowPrivilegeEscalation is not false")
            if sc.get("readOnlyRootFilesystem") is not True:
                error(cat, "readOnlyRootFilesystem is not true")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                error(cat, "does not drop ALL capabilities")
            resources = c.get("resources", {})
            for kind in ("requests", "limits"):
                for res in ("cpu", "memory"):
                    if res not in resources.get(kind, {}):
                        error(cat, f"no {kind}.{res}")
            argv = (c.get("command") or []) + (c.get("args") or [])
            binary = os.path.basename(argv[0]) if argv else None
            if binary not in binaries:
                error(cat, f"runs {argv[:1]}, not one of the image's binaries {sorted(binaries)}")
            is_worker = binary in ("fetcher-worker", "processor-worker", "aggregator")
            limit = resources.get("limits", {}).get("memory")
            if is_worker and limit and memory_bytes(limit) > 128 << 20:
                error(cat, f"memory limit {limit} is above 128Mi for a worker")
            ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
            for probe, path in (("livenessProbe", "/livez"), ("readinessProbe", "/readyz")):
                get = c.get(probe, {}).get("httpGet")
                if not get:
                    error(cat, f"no {probe} (httpGet)")
                    continue
                port = ports.get(get["port"], get["port"])
                if port not in ports.values():
                    error(cat, f"{probe} probes port {get['port']}, which the container does not declare")
                if is_worker and (get.get("path") != path or port != 9100):
                    error(cat, f"{probe} is not GET {path} on 9100 (--metrics-listen)")
                    if "--metrics-listen" not in argv:
                        error(cat, "probes :9100 but does not pass --metrics-listen")
            for env in c.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if env["name"] in SECRET_KEYS and not ref:
                    error(cat, f"{env['name']} is not taken from the Secret")
                if ref and (ref["name"] != "tributary" or ref["key"] not in SECRET_KEYS):
                    error(cat, f"{env['name']} refers to secret {ref['name']}/{ref['key']}")
            for source in c.get("envFrom", []):
                cm = source.get("configMapRef", {}).get("name")
                if cm and cm not in configmaps:
                    error(cat, f"envFrom ConfigMap {cm} is not in the base")

    for name, (where, svc) in by_kind.get("Service", {}).items():
        at = f"{where}: Service/{name}"
        selector = svc["spec"].get("selector", {})
        targets = [d for d in deployments.values()
                   if all(d[1]["spec"]["template"]["metadata"].get("labels", {}).get(k) == v for k, v in selector.items())]
        if len(targets) != 1:
            error(at, f"selector matches {len(targets)} Deployments, not one")
            continue
        ports = {p.get("name") for c in targets[0][1]["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
        ports |= {p["containerPort"] for c in targets[0][1]["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
        for p in svc["spec"]["ports"]:
            if p.get("targetPort", p["port"]) not in ports:
                error(at, f"targetPort {p.get('targetPort')} is not a port of {targets[0][1]['metadata']['name']}")

    auths = by_kind.get("TriggerAuthentication", {})
    for name, (where, ta) in auths.items():
        for ref in ta["spec"].get("secretTargetRef", []):
            if ref["name"] != "tributary" or ref["key"] not in SECRET_KEYS:
                error(f"{where}: TriggerAuthentication/{name}", f"refers to secret {ref['name']}/{ref['key']}")
    for name, (where, so) in by_kind.get("ScaledObject", {}).items():
        at = f"{where}: ScaledObject/{name}"
        target = so["spec"]["scaleTargetRef"]["name"]
        if target not in deployments:
            error(at, f"scales Deployment {target}, which is not in the base")
        elif "replicas" in deployments[target][1]["spec"]:
            error(at, f"Deployment {target} sets replicas, which would fight the autoscaler")
        for trigger in so["spec"]["triggers"]:
            auth = trigger.get("authenticationRef", {}).get("name")
            if auth and auth not in auths:
                error(at, f"authenticationRef {auth} is not in the base")
            queue = trigger.get("metadata", {}).get("queueName")
            if trigger["type"] == "rabbitmq":
                if queue not in queues:
                    error(at, f"queue {queue} is not in deploy/rabbitmq/definitions.json")
                if namespace and not queue.startswith(f"{namespace}."):
                    error(at, f"queue {queue} is not in namespace {namespace} (configmap)")
    done()


CHECKS = {
    "dockerfile": check_dockerfile,
    "compose": check_compose,
    "rabbitmq": check_rabbitmq,
    "kustomization": check_kustomization,
    "k8s-schemas": check_k8s_schemas,
    "k8s-references": check_k8s_references,
    "k8s-cluster-schemas": check_k8s_cluster_schemas,
}
CHECKS[sys.argv[1]]()
PY

check() { python3 "$tmp/check.py" "$1" "$tmp"; }

step "Dockerfile: BuildKit's parser, cargo-chef stages, non-root runtime, every binary"
check dockerfile

step "compose: docker-compose.yml against the Compose Specification schema"
check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml
step "compose: interpolated with nothing set (defaults only), schema and settings"
check compose
check-jsonschema --builtin-schema vendor.compose-spec "$tmp/compose.resolved.json"
step "compose: profile cluster (RabbitMQ nodes + deploy/rabbitmq/cluster.conf, Redis Cluster, URL lists)"
python3 scripts/validate-deploy-cluster.py compose "$tmp"
if docker compose version >/dev/null 2>&1; then
    docker compose config --quiet
    RABBITMQ_CLUSTER_COOKIE=check docker compose --profile cluster config --quiet
    echo "docker compose config: valid with and without the profile"
fi

step "rabbitmq: definitions (classic, quorum) and rabbitmq.conf (exact topology: cargo test --test e2e deploy::)"
check rabbitmq

step "k8s: the kustomization lists every manifest, and only existing ones"
check kustomization
if command -v kubectl >/dev/null 2>&1 && kubectl kustomize --help >/dev/null 2>&1; then
    kubectl kustomize deploy/k8s >"$tmp/rendered.yaml" || fail "kubectl kustomize deploy/k8s failed"
    echo "rendered with kubectl kustomize"
else
    echo "kubectl not installed: validating the listed files only"
fi

step "k8s: built-in kinds against Kubernetes $K8S_VERSIONS (strict), KEDA against deploy/schemas/keda"
check-jsonschema --check-metaschema deploy/schemas/keda/*.json
while read -r schema files; do
    # shellcheck disable=SC2086 # one word per file
    check-jsonschema --schemafile "$schema" $files
done <"$tmp/keda.txt"
K8S_VERSIONS="$K8S_VERSIONS" check k8s-schemas

step "k8s: references, probes, security context, resources, KEDA queues"
check k8s-references

step "k8s: overlay deploy/k8s-cluster (RabbitmqCluster against deploy/schemas/rabbitmq, Redis Cluster, URL lists)"
if command -v kubectl >/dev/null 2>&1 && kubectl kustomize --help >/dev/null 2>&1; then
    kubectl kustomize deploy/k8s-cluster >"$tmp/cluster.yaml" || fail "kubectl kustomize deploy/k8s-cluster failed"
fi
check-jsonschema --check-metaschema deploy/schemas/rabbitmq/*.json
check k8s-cluster-schemas
python3 scripts/validate-deploy-cluster.py k8s "$tmp/cluster.yaml"

echo "validate-deploy: all deploy files valid"
