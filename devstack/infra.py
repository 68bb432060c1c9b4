"""Start and stop a real Kafka broker and a real Redis server without Docker.

Kafka comes from Maven Central (``deploy/kafka/pom.xml``); its jars are cached
outside the work tree, under ``$TIDINGS_CACHE`` (default ``~/.cache/tidings``).
The broker runs in KRaft mode as a single combined broker and controller.
Redis is the ``redis-server`` binary from the system's packages.

Both run in the background with their data and logs under a state directory
(``.local/`` for ``make infra-up``, a temporary directory for the tests). Each
process's pid is written to ``<state>/<name>.pid``; ``down`` stops exactly those
pids and nothing else.

Command line::

    python -m devstack.infra up      # idempotent
    python -m devstack.infra down
    python -m devstack.infra status
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Popen objects of servers this process started: kept so that they are reaped
# on stop (and so Python does not warn about dropping a running child).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}
POM = REPO / "deploy" / "kafka" / "pom.xml"


class InfraError(RuntimeError):
    """A prerequisite is missing or a server did not come up."""


def kafka_version() -> str:
    match = re.search(r"<kafka.version>([^<]+)</kafka.version>", POM.read_text())
    if not match:
        raise InfraError(f"{POM} does not declare <kafka.version>")
    return match.group(1)


def cache_dir() -> Path:
    return Path(os.environ.get("TIDINGS_CACHE", Path.home() / ".cache" / "tidings"))


def _require(binary: str, hint: str) -> str:
    path = shutil.which(binary)
    if path is None:
        raise InfraError(f"{binary} not found on PATH. {hint}")
    return path


def java_binary() -> str:
    java = _require(
        "java",
        "Install Java 17 or newer, for example: apt-get install -y openjdk-17-jre-headless",
    )
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
    match = re.search(r'version "(\d+)', out.stderr + out.stdout)
    if not match or int(match.group(1)) < 17:
        raise InfraError(
            f"Kafka 4 needs Java 17 or newer; {java} reports: {out.stderr.strip()[:120]}. "
            "Install one, for example: apt-get install -y openjdk-17-jre-headless"
        )
    return java


def kafka_lib() -> Path:
    """The directory of Kafka's jars, fetched through Maven on first use."""
    lib = cache_dir() / f"kafka-{kafka_version()}" / "lib"
    if (lib / ".complete").exists():
        return lib
    mvn = _require("mvn", "Install Maven, for example: apt-get install -y maven")
    lib.mkdir(parents=True, exist_ok=True)
    print(f"fetching Apache Kafka {kafka_version()} jars from Maven Central into {lib}", flush=True)
    subprocess.run(
        [
            mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
            f"-DoutputDirectory={lib}", "-DincludeScope=runtime",
        ],
        check=True,
    )
    (lib / ".complete").write_text(kafka_version())
    return lib


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); check /proc where present.
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        return stat.read_text().split(") ", 1)[-1][:1] != "Z"
    return True


@dataclass
class Service:
    """One background server with its pid file under the state directory."""

    name: str
    state: Path
    port: int

    @property
    def pidfile(self) -> Path:
        return self.state / f"{self.name}.pid"

    @property
    def logfile(self) -> Path:
        return self.state / "logs" / f"{self.name}.out"

    def pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _alive(pid) else None

    def spawn(self, argv: list[str], env: dict[str, str] | None = None) -> int:
        self.logfile.parent.mkdir(parents=True, exist_ok=True)
        with self.logfile.open("ab") as log:
            proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, **(env or {})},
            )
        self.pidfile.write_text(str(proc.pid))
        _CHILDREN[proc.pid] = proc
        return proc.pid

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = self.pid()
            if pid is None:
                tail = self.logfile.read_text(errors="replace")[-2000:] if self.logfile.exists() else ""
                raise InfraError(f"{self.name} exited during start; end of {self.logfile}:\n{tail}")
            if port_open(self.port):
                return
            time.sleep(0.2)
        raise InfraError(f"{self.name} did not listen on port {self.port} within {timeout:.0f}s")

    def stop(self, timeout: float = 30.0) -> bool:
        pid = self.pid()
        if pid is None:
            self.pidfile.unlink(missing_ok=True)
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(pid):
            _reap(pid)
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
            while _alive(pid):
                _reap(pid)
                time.sleep(0.05)
        _reap(pid)
        self.pidfile.unlink(missing_ok=True)
        return True


def _reap(pid: int) -> None:
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is not None:
            _CHILDREN.pop(pid, None)
        return
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


_LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {logdir}/kafka-server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
"""


def kafka_service(state: Path, port: int = 9092, controller_port: int = 9093) -> Service:
    return Service("kafka", state, port)


def _already_up(service: Service, port_variable: str) -> bool:
    """True when a usable server is up: ours, or another one that answers as the right kind.

    A port held by something that does not answer like Kafka or Redis is an error.
    A server we did not start is used but never stopped by ``down``.
    """
    if service.pid() is not None and port_open(service.port):
        print(f"{service.name} already up on 127.0.0.1:{service.port} (pid {service.pid()})")
        return True
    if port_open(service.port):
        if _answers_as(service.name, service.port):
            print(f"{service.name}: using the server already listening on 127.0.0.1:{service.port} "
                  "(not started here, so not stopped here)")
            return True
        raise InfraError(
            f"port {service.port} is taken by a process that is not a {service.name} server; "
            f"stop it or set {port_variable}"
        )
    return False


def _answers_as(kind: str, port: int) -> bool:
    if kind == "redis":
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False
    try:
        _wait_kafka_metadata(port, timeout=5)
    except InfraError:
        return False
    return True


def new_cluster_id() -> str:
    """A random KRaft cluster id: URL-safe base64 of a UUID, never starting with '-'.

    One id in 64 would otherwise begin with '-', and StorageTool's argument parser
    then reads it as an option and refuses to format (seen in a CI run).
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def start_kafka(state: Path, port: int = 9092, controller_port: int = 9093) -> Service:
    """Start a single-node KRaft broker; return at once if ours is already up."""
    service = kafka_service(state, port, controller_port)
    if _already_up(service, "TIDINGS_KAFKA_PORT"):
        return service
    java = java_binary()
    lib = kafka_lib()
    kdir = state / "kafka"
    data = kdir / "data"
    logs = state / "logs"
    data.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    props = kdir / "server.properties"
    props.write_text(
        "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@127.0.0.1:{controller_port}",
                f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
                "controller.listener.names=CONTROLLER",
                "inter.broker.listener.name=PLAINTEXT",
                "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                f"log.dirs={data}",
                "num.partitions=4",
                "auto.create.topics.enable=false",
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=4",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "share.coordinator.state.topic.replication.factor=1",
                "share.coordinator.state.topic.min.isr=1",
                "group.initial.rebalance.delay.ms=0",
                "log.retention.hours=24",
                "",
            ]
        )
    )
    log4j = kdir / "log4j2.properties"
    log4j.write_text(_LOG4J2.format(logdir=logs))
    jvm = [
        java,
        os.environ.get("TIDINGS_KAFKA_HEAP", "-Xmx768m"),
        # The garbage collector settings Kafka's own start scripts use (kafka-run-class.sh): G1
        # aiming at 20 ms pauses. Without the pause goal G1 sized a young generation whose
        # collections stopped the broker for 15 to 27 ms every 4 to 5 s at 1,000 events/s.
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-XX:InitiatingHeapOccupancyPercent=35",
        "-XX:+ExplicitGCInvokesConcurrent",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={log4j}",
        f"-Dkafka.logs.dir={logs}",
        "-cp",
        f"{lib}/*",
    ]
    if not (data / "meta.properties").exists():
        cluster_id = new_cluster_id()
        subprocess.run(
            [*jvm, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    service.spawn([*jvm, "kafka.Kafka", str(props)])
    service.wait_ready(timeout=90)
    _wait_kafka_metadata(port, timeout=60)
    print(f"kafka up on 127.0.0.1:{port} (pid {service.pid()}, logs in {logs})")
    return service


def _wait_kafka_metadata(port: int, timeout: float) -> None:
    try:
        from confluent_kafka.admin import AdminClient
    except ImportError:  # plain port check is all we can do without the client
        return
    admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}"})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            meta = admin.list_topics(timeout=2)
            if meta.brokers:
                return
        except Exception:  # noqa: BLE001 - the broker is still starting
            time.sleep(0.3)
    raise InfraError(f"kafka on port {port} did not answer metadata requests within {timeout:.0f}s")


def start_redis(state: Path, port: int = 6379) -> Service:
    service = Service("redis", state, port)
    if _already_up(service, "TIDINGS_REDIS_PORT"):
        return service
    binary = _require(
        "redis-server", "Install it, for example: apt-get update && apt-get install -y redis-server"
    )
    rdir = state / "redis"
    rdir.mkdir(parents=True, exist_ok=True)
    service.spawn(
        [
            binary,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--dir", str(rdir),
            "--appendonly", "yes",
            "--save", "",
            "--daemonize", "no",
        ]
    )
    service.wait_ready(timeout=20)
    print(f"redis up on 127.0.0.1:{port} (pid {service.pid()})")
    return service


def _state() -> Path:
    return Path(os.environ.get("TIDINGS_STATE", REPO / ".local"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.infra", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=["up", "down", "status", "fetch"])
    args = parser.parse_args(argv)
    state = _state()
    state.mkdir(parents=True, exist_ok=True)
    kport = int(os.environ.get("TIDINGS_KAFKA_PORT", "9092"))
    rport = int(os.environ.get("TIDINGS_REDIS_PORT", "6379"))
    try:
        if args.action == "fetch":
            java_binary()
            print(kafka_lib())
        elif args.action == "up":
            start_redis(state, rport)
            start_kafka(state, kport, kport + 1)
        elif args.action == "down":
            for service in (Service("kafka", state, kport), Service("redis", state, rport)):
                pid = service.pid()
                print(f"{service.name}: " + (f"stopped pid {pid}" if service.stop() else "not running"))
        else:
            for service in (Service("kafka", state, kport), Service("redis", state, rport)):
                pid = service.pid()
                print(f"{service.name}: " + (f"up, pid {pid}" if pid else "down"))
    except InfraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
