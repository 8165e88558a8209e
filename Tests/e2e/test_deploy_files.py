"""Checks of the deployment files: Dockerfile, .dockerignore, docker-compose.yml,
deploy/haproxy.cfg, deploy/outbox_writer.py (SPEC §1, §7, §9, §10), deploy/prometheus.yml and
deploy/grafana-dashboard.json (SPEC §14).

No container engine runs on the build and CI machines, so nothing here starts a container.
Instead the files are parsed and their wiring is checked: the services exist, the brokers reach
the replica set and have distinct replica ids, HAProxy routes to every broker on the port it
listens on and health-checks /readyz, WebSocket-friendly timeouts, the image builds the right
product and ships the libraries it links. Two checks run real programs: `haproxy -c` validates
the configuration when HAProxy is installed, and the example outbox writer runs against MongoDB
(the server in MONGO_URL, else the wire-protocol double). One test starts a real broker (in
the E2E_STORE mode) to check that every metric the Prometheus and Grafana files use is exported.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import uuid
from pathlib import Path

import pytest
import yaml

from support.mongo import start_double
from support.waits import wait_for

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
HAPROXY_CFG = REPO / "deploy" / "haproxy.cfg"
OUTBOX_WRITER = REPO / "deploy" / "outbox_writer.py"

BROKERS = ("broker1", "broker2", "broker3")
DEFAULT_BUS_PORT = 7070  # SPEC §9
HOUR_S = 3600.0


# --------------------------------------------------------------------------------------------
# docker-compose.yml helpers

_INTERPOLATION = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")


def interpolate(value, env: dict[str, str] | None = None):
    """Compose's variable interpolation, with the variables of `env` (default: none set), so
    that the checks see what `docker compose up` does on a machine that sets nothing."""
    if not isinstance(value, str):
        return value
    env = env or {}

    def repl(m: re.Match) -> str:
        if m.group(1):
            return "$"
        name = m.group(2) or m.group(5)
        op, arg = m.group(3), m.group(4) or ""
        current = env.get(name)
        if op == ":-":
            return current if current else arg
        if op == "-":
            return current if current is not None else arg
        if op in (":?", "?"):
            assert current, f"${{{name}}} is required: {arg}"
            return current
        if op in (":+", "+"):
            return arg if current else ""
        return current or ""

    return _INTERPOLATION.sub(repl, value)


def service_env(svc: dict) -> dict[str, str]:
    raw = svc.get("environment") or {}
    if isinstance(raw, list):
        pairs = (item.split("=", 1) if "=" in item else (item, "") for item in raw)
        raw = {k: v for k, v in pairs}
    return {k: "" if v is None else str(interpolate(v)) for k, v in raw.items()}


def depends_on(svc: dict) -> dict[str, str]:
    raw = svc.get("depends_on") or {}
    if isinstance(raw, list):
        return {name: "service_started" for name in raw}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in raw.items()}


def healthcheck_command(svc: dict) -> str:
    hc = svc.get("healthcheck") or {}
    assert not hc.get("disable"), "healthcheck is disabled"
    test = hc.get("test")
    assert test, "no healthcheck test"
    if isinstance(test, str):
        return test
    assert test[0] in ("CMD", "CMD-SHELL"), f"healthcheck test must start with CMD or CMD-SHELL: {test}"
    return " ".join(str(part) for part in test[1:])


def command_words(svc: dict) -> list[str]:
    raw = svc.get("command") or []
    return shlex.split(raw) if isinstance(raw, str) else [str(x) for x in raw]


def published_ports(svc: dict) -> list[tuple[int, int]]:
    """(host port, container port) pairs from the short or long `ports` syntax."""
    out = []
    for entry in svc.get("ports") or []:
        if isinstance(entry, dict):
            out.append((int(entry["published"]), int(entry["target"])))
            continue
        spec = str(entry).split("/")[0]
        parts = spec.rsplit(":", 2) if spec.count(":") <= 2 else [spec]
        if len(parts) == 1:
            continue  # container port only: published on a random host port
        out.append((int(parts[-2]), int(parts[-1])))
    return out


def mounts(svc: dict) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) from the short or long `volumes` syntax."""
    out = []
    for entry in svc.get("volumes") or []:
        if isinstance(entry, dict):
            out.append((str(entry.get("source", "")), str(entry["target"]), bool(entry.get("read_only"))))
            continue
        parts = str(entry).split(":")
        if len(parts) == 1:
            out.append(("", parts[0], False))
        else:
            mode = parts[2] if len(parts) > 2 else ""
            out.append((parts[0], parts[1], "ro" in mode.split(",")))
    return out


def bind_source(source: str) -> Path | None:
    """A bind mount's host path (relative to the compose file), or None for a named volume."""
    if not source.startswith((".", "/", "~")):
        return None
    return (COMPOSE_FILE.parent / source).resolve()


def bus_port(svc: dict) -> int:
    return int(service_env(svc).get("BUS_PORT") or DEFAULT_BUS_PORT)


def mongo_hosts(url: str) -> tuple[list[str], dict[str, list[str]]]:
    parsed = urllib.parse.urlsplit(url)
    assert parsed.scheme == "mongodb", f"expected a mongodb:// URI, got {url}"
    hosts = parsed.netloc.rsplit("@", 1)[-1].split(",")
    return hosts, urllib.parse.parse_qs(parsed.query)


@pytest.fixture(scope="module")
def compose() -> dict:
    doc = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(doc, dict) and isinstance(doc.get("services"), dict), "no services in docker-compose.yml"
    return doc


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


# --------------------------------------------------------------------------------------------
# deploy/haproxy.cfg helpers

SECTION_KEYWORDS = {"global", "defaults", "frontend", "backend", "listen", "resolvers", "peers",
                    "userlist", "program", "cache", "mailers", "http-errors", "ring"}
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_haproxy(text: str) -> list[dict]:
    """Sections as {kind, name, lines: [[word, ...], ...]} (comments and blank lines dropped)."""
    sections: list[dict] = []
    for raw in text.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        if not line:
            continue
        words = line.split()
        if words[0] in SECTION_KEYWORDS:
            sections.append({"kind": words[0], "name": words[1] if len(words) > 1 else "", "lines": []})
        else:
            assert sections, f"haproxy.cfg: '{line}' is outside any section"
            sections[-1]["lines"].append(words)
    return sections


def haproxy_seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(us|ms|s|m|h|d)?", value)
    assert m, f"not an HAProxy time: {value}"
    return float(m.group(1)) * _UNITS[m.group(2) or "ms"]  # no unit means milliseconds


def settings(section: dict, keyword: str) -> list[list[str]]:
    return [words[1:] for words in section["lines"] if words[0] == keyword]


def timeouts(*sections: dict) -> dict[str, float]:
    """Effective `timeout X` values: later sections override earlier ones."""
    out: dict[str, float] = {}
    for section in sections:
        for args in settings(section, "timeout"):
            out[args[0]] = haproxy_seconds(args[1])
    return out


def bind_ports(section: dict) -> set[int]:
    ports = set()
    for args in settings(section, "bind"):
        ports.add(int(args[0].rsplit(":", 1)[1]))
    return ports


@pytest.fixture(scope="module")
def haproxy_sections() -> list[dict]:
    return parse_haproxy(HAPROXY_CFG.read_text())


@pytest.fixture(scope="module")
def lb(haproxy_sections, services) -> dict:
    """The frontend (or listen) section serving the port the haproxy service publishes, the
    backend it sends traffic to, and the defaults section before it."""
    target_ports = {container for _, container in published_ports(services["haproxy"])}
    entry = [s for s in haproxy_sections if s["kind"] in ("frontend", "listen") and bind_ports(s) & target_ports]
    assert entry, f"no frontend in haproxy.cfg binds a port the haproxy service publishes ({sorted(target_ports)})"
    front = entry[0]
    if front["kind"] == "listen":
        back = front
    else:
        backends = settings(front, "default_backend") + settings(front, "use_backend")
        assert backends, f"frontend {front['name']} has no default_backend"
        name = backends[0][0]
        found = [s for s in haproxy_sections if s["kind"] == "backend" and s["name"] == name]
        assert found, f"backend {name} is not defined"
        back = found[0]
    defaults = [s for s in haproxy_sections if s["kind"] == "defaults"]
    return {"frontend": front, "backend": back, "defaults": defaults[-1] if defaults else {"lines": []}}


# --------------------------------------------------------------------------------------------
# Dockerfile helpers


def parse_dockerfile(text: str) -> list[dict]:
    """Stages as {base, name, instructions: [(INSTRUCTION, args)]}; ARGs declared before the
    first FROM are substituted into FROM lines with their defaults."""
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        if current.strip():
            logical.append(current.strip())
        current = ""
    if current.strip():
        logical.append(current.strip())

    global_args: dict[str, str] = {}
    stages: list[dict] = []
    for line in logical:
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        args = args.strip()
        if instruction == "ARG" and not stages:
            name, _, default = args.partition("=")
            global_args[name] = default.strip("\"'")
            continue
        if instruction == "FROM":
            words = [w for w in args.split() if not w.startswith("--")]
            base = re.sub(r"\$\{?(\w+)\}?", lambda m: global_args.get(m.group(1), ""), words[0])
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append({"base": base, "name": name, "instructions": []})
            continue
        assert stages, f"Dockerfile: {instruction} before the first FROM"
        stages[-1]["instructions"].append((instruction, args))
    return stages


def instructions(stage: dict, which: str) -> list[str]:
    return [args for instruction, args in stage["instructions"] if instruction == which]


def apt_installs(stage: dict) -> set[str]:
    """Package names passed to `apt-get install` in the stage's RUN instructions."""
    packages: set[str] = set()
    for run in instructions(stage, "RUN"):
        for command in re.split(r"&&|;|\|\|", run):
            words = command.split()
            if "install" in words and any(w in ("apt-get", "apt") for w in words):
                after = words[words.index("install") + 1:]
                packages.update(w for w in after if not w.startswith("-"))
    return packages


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Whether .dockerignore excludes `path` (or a directory above it): Go filepath.Match plus
    `**`, later patterns win, `!` re-includes. Good enough for the patterns we use."""

    def to_regex(pattern: str) -> re.Pattern:
        out, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out, i = out + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            elif pattern[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif pattern[i] == "?":
                out, i = out + "[^/]", i + 1
            else:
                out, i = out + re.escape(pattern[i]), i + 1
        return re.compile(out + r"\Z")

    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        pattern = pattern.strip().strip("/")
        if pattern.startswith("./"):
            pattern = pattern[2:]
        rx = to_regex(pattern)
        if any(rx.match(prefix) for prefix in prefixes):
            excluded = not negate
    return excluded


@pytest.fixture(scope="module")
def stages() -> list[dict]:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def build_stage(stages) -> dict:
    found = [s for s in stages if any("swift build" in run for run in instructions(s, "RUN"))]
    assert found, "no Dockerfile stage runs `swift build`"
    return found[0]


# --------------------------------------------------------------------------------------------
# docker-compose.yml


def test_compose_has_the_services(services):
    for name in ("mongo", *BROKERS, "haproxy", "outbox-writer"):
        assert name in services, f"docker-compose.yml has no service {name}"


def test_mongo_is_a_one_member_replica_set_that_initiates_itself(compose, services):
    mongo = services["mongo"]
    image = str(mongo.get("image", ""))
    m = re.fullmatch(r"mongo:(\d+)(?:[.\-].*)?", image)
    assert m and int(m.group(1)) >= 6, f"mongo must run MongoDB >= 6.0 (SPEC §10), image is {image!r}"
    words = command_words(mongo)
    assert "--replSet" in words and words[words.index("--replSet") + 1] == "rs0", f"mongo command {words} lacks --replSet rs0"
    assert "--bind_ip_all" in words, "mongo must listen on all interfaces for the other containers"

    check = healthcheck_command(mongo)
    assert "rs.initiate" in check, "mongo's healthcheck must initiate the replica set when needed"
    assert re.search(r"_id:\s*['\"]rs0['\"]", check), "rs.initiate must create the replica set rs0"
    member = re.search(r"host:\s*['\"]([^'\"]+)['\"]", check)
    assert member, "rs.initiate must name the member's host"
    # The member's name is what clients discover and reconnect to: the service name and port
    # every MONGO_URL uses.
    assert member.group(1) == "mongo:27017", f"replica-set member is {member.group(1)}, expected mongo:27017"
    assert "isWritablePrimary" in check or "PRIMARY" in check, \
        "mongo must turn healthy only once it is primary (rs.status().ok is 1 before that)"

    data = [(source, target) for source, target, _ in mounts(mongo) if target == "/data/db"]
    assert data, "mongo's data directory /data/db is not on a volume"
    source = data[0][0]
    assert bind_source(source) is not None or source in (compose.get("volumes") or {}), \
        f"named volume {source} is not declared under top-level volumes"


@pytest.mark.parametrize("name", BROKERS)
def test_broker_service_wiring(services, name):
    svc = services[name]
    build = svc.get("build")
    assert build is not None, f"{name} is not built from the Dockerfile"
    context, dockerfile = (build, "Dockerfile") if isinstance(build, str) else (build.get("context", "."), build.get("dockerfile", "Dockerfile"))
    assert (COMPOSE_FILE.parent / context / dockerfile).resolve() == DOCKERFILE.resolve(), \
        f"{name} builds {context}/{dockerfile}, not the repository's Dockerfile"

    env = service_env(svc)
    hosts, query = mongo_hosts(env.get("MONGO_URL", ""))
    assert hosts == ["mongo:27017"], f"{name}: MONGO_URL hosts are {hosts}, expected mongo:27017"
    assert query.get("replicaSet") == ["rs0"], f"{name}: MONGO_URL must say replicaSet=rs0 (change streams need it)"
    assert re.fullmatch(r"[A-Za-z0-9_\-]+", env.get("MONGO_DB", "bus")), f"{name}: bad MONGO_DB"
    assert env.get("BUS_REPLICA_ID"), f"{name} has no BUS_REPLICA_ID"
    outbox = [e.strip() for e in env.get("BUS_OUTBOX", "").split(",") if e.strip()]
    assert outbox, f"{name} has no BUS_OUTBOX"
    for entry in outbox:
        assert re.fullmatch(r"[^.\s]+\.[^\s]+", entry), f"{name}: BUS_OUTBOX entry {entry!r} is not db.collection"
    assert 100 <= int(env.get("BUS_LEASE_TTL_MS", "10000")) <= 3_600_000, f"{name}: BUS_LEASE_TTL_MS out of range"
    # Inside a container the broker must listen on all interfaces (the default), not loopback.
    assert env.get("BUS_HOST", "0.0.0.0") in ("0.0.0.0", "::"), f"{name}: BUS_HOST must be 0.0.0.0"

    check = healthcheck_command(svc)
    assert "/readyz" in check, f"{name}'s healthcheck does not ask /readyz"
    assert re.search(rf"(localhost|127\.0\.0\.1|\[::1\]):{bus_port(svc)}/readyz", check), \
        f"{name}'s healthcheck does not ask the port the broker listens on ({bus_port(svc)}): {check}"
    assert depends_on(svc).get("mongo") == "service_healthy", f"{name} must wait for mongo to be healthy (primary)"
    assert svc.get("restart") in ("always", "unless-stopped", "on-failure") or \
        str(svc.get("restart", "")).startswith("on-failure"), f"{name} has no restart policy"


def test_brokers_share_one_store_and_have_distinct_replica_ids(services):
    envs = {name: service_env(services[name]) for name in BROKERS}
    ids = [env["BUS_REPLICA_ID"] for env in envs.values()]
    assert len(set(ids)) == len(ids), f"BUS_REPLICA_ID values must be distinct: {ids}"
    for key in ("MONGO_URL", "MONGO_DB", "BUS_OUTBOX", "BUS_LEASE_TTL_MS"):
        values = {env.get(key) for env in envs.values()}
        assert len(values) == 1, f"replicas must agree on {key}: {values}"


def test_haproxy_service(services):
    svc = services["haproxy"]
    assert str(svc.get("image", "")).startswith("haproxy:2."), f"haproxy image is {svc.get('image')}"
    assert (7070, 7070) in published_ports(svc), f"haproxy must publish 7070:7070, has {svc.get('ports')}"
    cfg = [(src, target, ro) for src, target, ro in mounts(svc) if bind_source(src) == HAPROXY_CFG.resolve()]
    assert cfg, "deploy/haproxy.cfg is not mounted into the haproxy service"
    _, target, read_only = cfg[0]
    assert target == "/usr/local/etc/haproxy/haproxy.cfg", f"the official image reads /usr/local/etc/haproxy/haproxy.cfg, not {target}"
    assert read_only, "haproxy.cfg should be mounted read-only"
    deps = depends_on(svc)
    for name in BROKERS:
        assert deps.get(name) == "service_healthy", f"haproxy must wait for {name} to be healthy"


def test_outbox_writer_service(services):
    svc = services["outbox-writer"]
    assert str(svc.get("image", "")).startswith("python:3.11"), f"outbox-writer image is {svc.get('image')}"
    script = [target for src, target, _ in mounts(svc) if bind_source(src) == OUTBOX_WRITER.resolve()]
    assert script, "deploy/outbox_writer.py is not mounted into outbox-writer"
    command = " ".join(command_words(svc) + [str(x) for x in svc.get("entrypoint") or []])
    assert "pymongo==4.10.1" in command, "outbox-writer must install the pinned pymongo==4.10.1"
    assert script[0] in command, f"outbox-writer does not run {script[0]}"

    env = service_env(svc)
    hosts, query = mongo_hosts(env.get("MONGO_URL", ""))
    assert hosts == ["mongo:27017"] and query.get("replicaSet") == ["rs0"], \
        "outbox-writer must use the replica set (transactions need one)"
    drained = {e.strip() for e in service_env(services["broker1"])["BUS_OUTBOX"].split(",")}
    assert env.get("OUTBOX") in drained, f"outbox-writer writes {env.get('OUTBOX')}, brokers drain {sorted(drained)}"
    assert depends_on(svc).get("mongo") == "service_healthy", "outbox-writer must wait for mongo to be primary"


# --------------------------------------------------------------------------------------------
# deploy/haproxy.cfg


def test_haproxy_routes_to_every_broker_on_its_port(lb, services):
    servers = {}
    for args in settings(lb["backend"], "server"):
        name, address, options = args[0], args[1], args[2:]
        host, _, port = address.rpartition(":")
        servers[host] = (int(port), options)
    for name in BROKERS:
        assert name in servers, f"backend {lb['backend']['name']} has no server for {name}"
        port, options = servers[name]
        assert port == bus_port(services[name]), f"{name} listens on {bus_port(services[name])}, haproxy uses {port}"
        assert "check" in options, f"server {name} is not health-checked"


def test_haproxy_balances_and_health_checks_readyz(lb):
    back = lb["backend"]
    assert settings(back, "balance"), f"backend {back['name']} sets no balance algorithm"
    checks = [" ".join(args) for args in settings(back, "option") if args and args[0] == "httpchk"]
    sends = [" ".join(args) for args in settings(back, "http-check") if args and args[0] == "send"]
    assert any("/readyz" in c for c in checks + sends), "backend must health-check GET /readyz"
    expects = [args for args in settings(back, "http-check") if args and args[0] == "expect"]
    assert ["expect", "status", "200"] in expects, "backend must expect status 200 from /readyz"


def test_haproxy_is_http_mode_with_websocket_friendly_timeouts(lb):
    modes = [args[0] for section in (lb["defaults"], lb["frontend"], lb["backend"]) for args in settings(section, "mode")]
    assert modes and modes[-1] == "http", f"haproxy must run in mode http, has {modes}"
    t = timeouts(lb["defaults"], lb["frontend"], lb["backend"])
    for name in ("client", "server", "tunnel"):
        assert name in t, f"timeout {name} is not set"
        assert t[name] >= HOUR_S, f"timeout {name} is {t[name]} s; idle WebSocket subscribers need >= 1 h"
    assert "connect" in t and t["connect"] <= 30, "timeout connect should be short"
    assert "http-request" in t, "timeout http-request is not set (slowloris protection)"


def _haproxy_binary() -> str | None:
    found = shutil.which("haproxy")
    if found:
        return found
    for candidate in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def test_haproxy_accepts_the_config(tmp_path):
    binary = _haproxy_binary()
    if binary is None:
        pytest.skip("haproxy is not installed (apt-get install haproxy); the configuration's syntax was not checked")
    text = HAPROXY_CFG.read_text()
    # HAProxy resolves server names when it starts; outside compose they do not exist.
    for name in BROKERS:
        text = re.sub(rf"(^\s*server\s+\S+\s+){re.escape(name)}:", r"\g<1>127.0.0.1:", text, flags=re.M)
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(text)
    result = subprocess.run([binary, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"haproxy -c rejected deploy/haproxy.cfg:\n{output}"
    assert "[ALERT]" not in output and "[WARNING]" not in output, f"haproxy -c complained:\n{output}"


# --------------------------------------------------------------------------------------------
# Dockerfile and .dockerignore


def test_dockerfile_builds_the_broker_in_a_swift_6_stage(stages, build_stage):
    assert len(stages) >= 2, "the Dockerfile must be multi-stage (build, runtime)"
    m = re.fullmatch(r"(?:docker\.io/)?(?:library/)?swift:(\d+)\.(\d+)(?:\.\d+)?(?:-(\w+))?", build_stage["base"])
    assert m, f"the build stage must be an official swift image, is {build_stage['base']}"
    version = (int(m.group(1)), int(m.group(2)))
    assert version[0] == 6, f"the build stage must be Swift 6.x, is {build_stage['base']}"
    # The package's dependency versions declare swift-tools-version 6.2.
    assert version >= (6, 2), f"the dependencies need a 6.2+ toolchain, build stage is {build_stage['base']}"
    build = " ".join(run for run in instructions(build_stage, "RUN") if "swift build" in run)
    for flag in ("-c release", "--product stream-broker", "--static-swift-stdlib"):
        assert flag in build, f"`swift build` lacks {flag}: {build}"
    missing = {"libmongoc-dev", "libbson-dev", "libsqlite3-dev", "libssl-dev", "libgoogle-perftools-dev", "pkg-config"} - apt_installs(build_stage)
    assert not missing, f"the build stage does not install {sorted(missing)}"


def test_dockerfile_runtime_stage(stages, build_stage):
    final = stages[-1]
    assert final is not build_stage, "the last stage must be the runtime stage, not the build stage"
    assert final["base"].startswith("debian:"), f"runtime base is {final['base']}"
    codename = final["base"].split(":", 1)[1].split("-")[0]
    assert codename in build_stage["base"], \
        f"build ({build_stage['base']}) and runtime ({final['base']}) must be the same Debian release: the binary links its libraries"

    packages = apt_installs(final)
    missing = {"libmongoc-1.0-0", "libbson-1.0-0", "libsqlite3-0", "libtcmalloc-minimal4", "ca-certificates"} - packages
    assert not missing, f"the runtime stage does not install {sorted(missing)}"
    assert not {p for p in packages if p.endswith("-dev")}, "the runtime stage should not install -dev packages"

    copies = [args for args in instructions(final, "COPY") if "stream-broker" in args]
    stage_ref = build_stage["name"] or str(stages.index(build_stage))
    assert any(f"--from={stage_ref}" in c for c in copies), f"the runtime stage does not copy stream-broker from stage {stage_ref}"
    destination = copies[0].split()[-1]
    if destination.endswith("/"):
        destination += "stream-broker"
    assert instructions(final, "ENTRYPOINT") == ['["/usr/local/bin/stream-broker"]'], "ENTRYPOINT must run /usr/local/bin/stream-broker"
    assert destination == "/usr/local/bin/stream-broker", f"stream-broker is copied to {destination}"

    assert any(re.search(r"\b7070\b", e) for e in instructions(final, "EXPOSE")), "EXPOSE 7070 is missing"
    health = " ".join(instructions(final, "HEALTHCHECK"))
    assert "/readyz" in health, "the image's HEALTHCHECK does not ask /readyz"
    tool = "wget" if "wget" in health else "curl" if "curl" in health else None
    assert tool and tool in packages, f"the HEALTHCHECK's HTTP client ({tool}) is not installed in the runtime stage"

    users = instructions(final, "USER")
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the broker must not run as root"


def test_dockerignore_and_build_context(build_stage):
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and not line.startswith("#")]
    for path in (".build/release/stream-broker", ".build_mongo/x", "data/streambroker.sqlite3", ".git/HEAD",
                 "Tests/e2e/__pycache__/conftest.cpython-311.pyc", "__pycache__/x.pyc"):
        assert dockerignore_excludes(patterns, path), f".dockerignore does not exclude {path}"
    # The build plugin embeds web/ and clients/js/ (Plugins/EmbedStaticFiles), so the build stage
    # copies them with the sources.
    copied = {w.rstrip("/") for args in instructions(build_stage, "COPY") for w in args.split()[:-1] if not w.startswith("--")}
    for needed in ("Package.*", "Sources", "Tests", "Plugins", "web", "clients"):
        assert needed in copied, f"the build stage does not COPY {needed}"
    # What the build stage copies from the context must exist and not be ignored.
    for args in instructions(build_stage, "COPY"):
        words = [w for w in args.split() if not w.startswith("--")]
        for source in words[:-1]:
            matches = list(REPO.glob(source))
            assert matches, f"COPY {source}: nothing in the repository matches"
            for match in matches:
                relative = match.relative_to(REPO).as_posix()
                assert not dockerignore_excludes(patterns, relative), f"COPY {source}: {relative} is excluded by .dockerignore"


# --------------------------------------------------------------------------------------------
# deploy/outbox_writer.py, run against MongoDB


WRITE_METHODS = {"insert_one", "insert_many", "update_one", "update_many", "replace_one",
                 "delete_one", "delete_many", "bulk_write", "find_one_and_update"}


def test_outbox_writer_writes_inside_one_transaction():
    """Every write of the example passes the transaction's session: an order and its event are
    committed together or not at all (a write without `session=` would commit on its own)."""
    tree = ast.parse(OUTBOX_WRITER.read_text(), filename=str(OUTBOX_WRITER))
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)]
    assert any(c.func.attr == "with_transaction" for c in calls), "the writer does not use session.with_transaction"
    writes = [c for c in calls if c.func.attr in WRITE_METHODS]
    targets = {ast.unparse(c.func.value) for c in writes}
    assert {"orders", "outbox"} <= targets, f"expected writes to orders and outbox, found writes to {sorted(targets)}"
    for call in writes:
        assert any(k.arg == "session" for k in call.keywords), \
            f"line {call.lineno}: {ast.unparse(call.func)}(...) does not run in the transaction (no session=)"


@pytest.fixture
def mongo_url(tmp_path):
    """The MongoDB of this run (MONGO_URL, set in mongo mode), else a wire-protocol double."""
    if os.environ.get("MONGO_URL"):
        yield os.environ["MONGO_URL"]
        return
    double = start_double(tmp_path / "double")
    try:
        yield double.url
    finally:
        double.stop(timeout=15)


def test_outbox_writer_writes_order_and_event_together_until_stopped(mongo_url, tmp_path):
    import pymongo  # a pinned test requirement (Tests/MongoDouble/requirements.txt)

    db_name = f"e2e_shop_{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, MONGO_URL=mongo_url, OUTBOX=f"{db_name}.outbox", ORDERS=f"{db_name}.orders",
               TOPIC="orders.created", INTERVAL_S="0.05")
    env.pop("COUNT", None)  # run forever, like the compose service
    log_path = tmp_path / "writer.log"
    client = pymongo.MongoClient(mongo_url, serverSelectionTimeoutMS=5000)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, str(OUTBOX_WRITER)], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: client[db_name].outbox.count_documents({}) >= 3 or proc.poll() is not None,
                 timeout=30, message="three outbox rows")
        assert proc.poll() is None, f"the writer exited with {proc.returncode}: {log_path.read_text()}"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0, f"the writer did not stop cleanly on SIGTERM: {log_path.read_text()}"

        rows = list(client[db_name].outbox.find())
        orders = {o["_id"]: o for o in client[db_name].orders.find()}
        assert len(rows) >= 3
        # One transaction per order: every event has its order and every order its event.
        assert len(orders) == len(rows), f"{len(orders)} orders but {len(rows)} outbox rows"
        now = int(time.time() * 1000)
        for row in rows:
            assert isinstance(row["_id"], str) and 0 < len(row["_id"].encode()) <= 200, "row _id becomes the event id"
            assert row["topic"] == "orders.created"
            assert re.fullmatch(r"cust-\d+", row["key"])
            assert all(isinstance(k, str) and isinstance(v, str) for k, v in row["headers"].items()), "headers are string → string"
            assert isinstance(row["createdTs"], int) and now - 120_000 < row["createdTs"] <= now + 1000, "createdTs is epoch ms"
            order = orders.get(row["payload"]["orderId"])
            assert order is not None, f"event {row['_id']} announces an order that was not stored"
            assert order["customer"] == row["key"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        client.drop_database(db_name)
        client.close()


# --------------------------------------------------------------------------------------------
# deploy/prometheus.yml and deploy/grafana-dashboard.json (SPEC §14)

PROMETHEUS_YML = REPO / "deploy" / "prometheus.yml"
GRAFANA_DASHBOARD = REPO / "deploy" / "grafana-dashboard.json"
METRIC_NAME = re.compile(r"\bbus_[a-z0-9_]+\b")
# Only a broker on MongoDB has change streams to resume (SQLite's feed is in process).
MONGO_ONLY_METRICS = {"bus_change_stream_resumes_total"}


@pytest.fixture(scope="module")
def prometheus() -> dict:
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    assert isinstance(config, dict) and config.get("scrape_configs"), "prometheus.yml has no scrape_configs"
    return config


@pytest.fixture(scope="module")
def dashboard() -> dict:
    import json

    board = json.loads(GRAFANA_DASHBOARD.read_text())
    assert isinstance(board, dict) and board.get("panels"), "the dashboard has no panels"
    return board


def dashboard_queries(board: dict) -> list[str]:
    """Every PromQL expression of the dashboard: panel targets (rows' nested panels too) and
    template variable queries."""
    exprs = []
    panels = list(board["panels"])
    while panels:
        panel = panels.pop()
        panels.extend(panel.get("panels") or [])
        exprs += [t["expr"] for t in panel.get("targets") or []]
    for var in board.get("templating", {}).get("list", []):
        query = var.get("query")
        exprs.append(query.get("query", "") if isinstance(query, dict) else str(query or ""))
    return [e for e in exprs if e]


def test_prometheus_scrapes_every_broker_replica_directly(prometheus, services):
    """One job scrapes /metrics of each broker service of docker-compose.yml on the port it
    listens on (BUS_PORT), labelled with its replica id — and never HAProxy, which would mix
    the replicas' counters into one series."""
    jobs = [j for j in prometheus["scrape_configs"] if j.get("metrics_path", "/metrics") == "/metrics"]
    assert jobs, "no scrape job for /metrics"
    targets = {}
    for job in jobs:
        assert job.get("scheme", "http") in ("http", "https")
        for static in job.get("static_configs") or []:
            for target in static["targets"]:
                targets[target] = (static.get("labels") or {}).get("replica")
    expected = {}
    for name in BROKERS:
        env = service_env(services[name])
        expected[f"{name}:{env.get('BUS_PORT', DEFAULT_BUS_PORT)}"] = env.get("BUS_REPLICA_ID", name)
    assert targets == expected, f"scrape targets {targets}, expected each replica directly: {expected}"
    lb_names = {"haproxy", "localhost", "127.0.0.1"}
    assert not [t for t in targets if t.split(":")[0] in lb_names], "Prometheus must not scrape through the load balancer"


def test_grafana_dashboard_takes_its_datasource_as_an_input(dashboard):
    """An importable dashboard: the Prometheus datasource is the `DS_PROMETHEUS` input, used by
    every panel, target and variable; each panel has a title and a grid position; ids unique."""
    inputs = {i["name"]: i for i in dashboard.get("__inputs", [])}
    assert inputs.get("DS_PROMETHEUS", {}).get("pluginId") == "prometheus"
    panels, pending = [], list(dashboard["panels"])
    while pending:
        panel = pending.pop()
        pending.extend(panel.get("panels") or [])
        panels.append(panel)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in panels:
        assert panel.get("title") and panel.get("gridPos"), panel
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            assert var["datasource"]["uid"] == "${DS_PROMETHEUS}"


def test_grafana_dashboard_covers_the_broker_metrics(dashboard):
    """What SPEC §14 asks the dashboard to show is there: rates, lag, in flight, oldest unacked
    age, redeliveries, dead letters, connections, the three latency histograms as p50 and p99,
    change-stream wake-ups, resumes and rescans, auth refusals."""
    exprs = dashboard_queries(dashboard)
    text = "\n".join(exprs)
    for name in ("bus_events_published_total", "bus_events_delivered_total", "bus_group_lag", "bus_group_inflight",
                 "bus_group_oldest_unacked_age_seconds", "bus_redeliveries_total", "bus_dead_letters_total",
                 "bus_connections", "bus_change_stream_wakeups_total", "bus_change_stream_resumes_total",
                 "bus_change_stream_rescans_total", "bus_auth_refusals_total"):
        assert re.search(rf"\b{name}\b", text), f"the dashboard does not show {name}"
    for histogram in ("bus_append_duration_seconds", "bus_commit_duration_seconds", "bus_publish_to_delivery_seconds"):
        for q in ("0.5", "0.99"):
            assert any(f"histogram_quantile({q}," in e and f"{histogram}_bucket" in e and "le" in e for e in exprs), \
                f"no p{q} of {histogram}"
    for e in exprs:
        assert e.count("(") == e.count(")") and e.count("{") == e.count("}"), f"unbalanced query: {e}"


def test_every_metric_the_deploy_files_use_is_exported(make_broker, dashboard):
    """Every metric name the Grafana queries and prometheus.yml use appears in a real broker's
    /metrics after some traffic (a group subscriber receives, nacks once, and acks), so neither
    file can drift from the code. `bus_change_stream_resumes_total` exists only on MongoDB,
    where it is checked too."""
    from support.mongo import store_mode
    from support.names import unique

    broker = make_broker()
    topic = unique("deploy.metrics")
    sub = broker.ws()
    sub.subscribe(topic, "g", from_={"kind": "earliest"})
    pub = broker.ws()
    for i in range(3):
        pub.publish(topic, {"i": i})
    seen = 0
    while seen < 3:
        m = sub.recv_type("MESSAGE")
        if m["attempt"] == 1 and m["offset"] == 1:
            sub.nack(m, delay_ms=0)
            continue
        sub.ack(m)
        seen += 1
    broker.wait_committed(topic, "g", 3)

    def exported() -> set[str]:
        names = set()
        for line in broker.http_raw("GET", "/metrics")[2].decode().splitlines():
            if line.startswith("# TYPE "):
                names.add(line.split()[2])
            elif line and not line.startswith("#"):
                names.add(re.split(r"[{\s]", line, 1)[0])
        return names

    used = set(METRIC_NAME.findall("\n".join(dashboard_queries(dashboard)))) | set(METRIC_NAME.findall(PROMETHEUS_YML.read_text()))
    assert used, "no metric names found in the deploy files"
    if store_mode() != "mongo":
        used -= MONGO_ONLY_METRICS
    names = wait_for(lambda: (n := exported()) and "bus_commit_duration_seconds_bucket" in n and n, 5,
                     message="a commit observed")
    missing = sorted(used - names)
    assert not missing, f"the deploy files use metrics the broker does not export: {missing}"
