"""Ingest benchmark: storescu sends the same CT study to our node, dcmtk storescp and Orthanc.

    python bench/ingest.py [--slices 300] [--series 2] [--size 512] [--runs 1]

Each receiver gets the identical folder over one association from dcmtk ``storescu`` (with
TCP_NODELAY=1). Ours runs as ``zorgbericht dicom`` storing in SeaweedFS (S3) with a SQLite
index and fsync'ed spool; storescp writes to local disk; Orthanc to its own storage. It prints
instances/s and MB/s for each, our ratios against both, and for ours also the time until
everything was uploaded and indexed and until all previews were rendered.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dicom_ingest.synthetic import write_study  # noqa: E402
from infra.peers import (  # noqa: E402
    S3_ACCESS_KEY,
    S3_SECRET_KEY,
    Orthanc,
    SeaweedFS,
    StoreSCP,
    free_port,
    wait_for_port,
)

OUT = Path(__file__).resolve().parent / "out"
ZB = str(Path(sys.executable).parent / "zorgbericht")


def study_folder(series: int, slices: int, size: int) -> Path:
    folder = OUT / f"ct-{series}x{slices}-{size}"
    if not (folder / ".complete").exists():
        shutil.rmtree(folder, ignore_errors=True)
        print(f"writing a {series} x {slices}-slice {size}² CT to {folder} ...", flush=True)
        write_study(
            folder,
            series=series,
            slices=slices,
            size=size,
            patient={
                "PatientName": "BENCH^CT",
                "PatientID": "BENCH01",
                "PatientBirthDate": "19700101",
            },
        )
        (folder / ".complete").touch()
    return folder


def storescu(port: int, called: str, folder: Path) -> float:
    """Send the folder over one association; return the wall time in seconds."""
    files = sorted(str(p) for p in folder.glob("*.dcm"))
    started = time.perf_counter()
    result = subprocess.run(
        [
            "storescu",
            "-aet",
            "STORESCU",
            "-aec",
            called,
            "--max-pdu",
            "131072",
            "127.0.0.1",
            str(port),
            *files,
        ],
        env={**os.environ, "TCP_NODELAY": "1"},
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"storescu to {called} failed: {result.stderr[-500:]}")
    return elapsed


def run_ours(folder: Path, s3: SeaweedFS, work: Path) -> dict[str, float]:
    s3.create_bucket("zb-bench")
    port = free_port()
    env = {
        **os.environ,
        "ZB_DATA_DIR": str(work),
        "ZB_DICOM_PORT": str(port),
        "ZB_DICOM_HOST": "127.0.0.1",
        "ZB_STORAGE_URL": "s3://zb-bench/bench",
        "ZB_S3_ENDPOINT_URL": s3.endpoint,
        "ZB_S3_ACCESS_KEY": S3_ACCESS_KEY,
        "ZB_S3_SECRET_KEY": S3_SECRET_KEY,
        "ZB_LOG_LEVEL": "WARNING",
    }
    subprocess.run(
        [ZB, "tenant", "create", "bench", "--name", "Bench", "--ae", "STORESCU"],
        env=env,
        check=True,
        capture_output=True,
    )
    proc = subprocess.Popen([ZB, "dicom"], env=env)
    try:
        wait_for_port(port, proc=proc)
        started = time.perf_counter()
        answered = storescu(port, "ZORGBERICHT", folder)
        expected = len(list(folder.glob("*.dcm")))
        indexed = _wait_sql(work, f"SELECT count(*) >= {expected} FROM instance", started)
        previews = _wait_sql(
            work, "SELECT count(*) = 0 FROM instance WHERE preview_state = 'pending'", started
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    return {"answered": answered, "indexed": indexed, "previews": previews}


def _wait_sql(work: Path, query: str, started: float, timeout: float = 900) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with sqlite3.connect(work / "zorgbericht.sqlite3", timeout=30) as db:
            if db.execute(query).fetchone()[0]:
                return time.perf_counter() - started
        time.sleep(0.1)
    raise TimeoutError(query)


def report(name: str, seconds: float, count: int, megabytes: float) -> None:
    print(
        f"  {name:34s} {seconds:7.2f} s  {count / seconds:8.1f} inst/s  "
        f"{megabytes / seconds:8.1f} MB/s",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--series", type=int, default=2)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    folder = study_folder(args.series, args.slices, args.size)
    files = list(folder.glob("*.dcm"))
    count, megabytes = len(files), sum(f.stat().st_size for f in files) / 1e6
    print(f"study: {count} instances, {megabytes:.0f} MB, one association each", flush=True)
    work = Path(tempfile.mkdtemp(prefix="zb-bench-"))
    try:
        with SeaweedFS() as s3:
            ours = run_ours(folder, s3, work / "zb")
        with StoreSCP() as scp:
            dcmtk = storescu(scp.port, scp.ae_title, folder)
        with Orthanc(plugins=False) as pacs:
            orthanc = storescu(pacs.dicom_port, pacs.ae_title, folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("results (C-STORE answered = storescu finished):")
    report("zorgbericht -> SeaweedFS, answered", ours["answered"], count, megabytes)
    report("zorgbericht, uploaded + indexed", ours["indexed"], count, megabytes)
    report("zorgbericht, previews rendered", ours["previews"], count, megabytes)
    report("dcmtk storescp -> disk", dcmtk, count, megabytes)
    report("Orthanc", orthanc, count, megabytes)
    print(f"ratio vs Orthanc:  {orthanc / ours['answered']:.2f}x  (target >= 1.5)")
    print(f"ratio vs storescp: {dcmtk / ours['answered']:.2f}x  (target >= 0.5)")


if __name__ == "__main__":
    main()
