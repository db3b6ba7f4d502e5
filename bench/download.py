"""Download benchmark: the DICOM ZIP of a large study through uvicorn vs the raw object store.

    python bench/download.py [--slices 1000] [--series 2] [--size 512] [--runs 2]

A synthetic CT (2 x 1000 slices of 512², about 1 GB) is imported into SeaweedFS (S3), shared,
and the recipient flow is walked over HTTP (link, terms, birth date, SMS code from the file
backend). Then, in the same run:

- **raw**: every instance object read straight from the store with boto3, one after the
  other, as the ZIP stream reads them;
- **zip**: ``GET /api/v1/recipient/download?format=dicom&study=all`` from ``zorgbericht serve``
  (uvicorn), read by a streaming HTTP client.

It prints MB/s of both, the ratio (target >= 0.8) and the server's peak RSS growth during the
download (target <= 32 MB), read from ``/proc/<pid>/status`` (VmHWM against VmRSS before).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from infra.peers import S3_ACCESS_KEY, S3_SECRET_KEY, SeaweedFS, free_port, wait_for_port  # noqa: E402

ZB = str(Path(sys.executable).parent / "zorgbericht")
OUT = Path(__file__).resolve().parent / "out"
BUCKET, PREFIX = "zb-bench-dl", "bench"
PATIENT = {"PatientName": "BENCH^DL", "PatientID": "BENCHDL1", "PatientBirthDate": "19700101"}


def study_folder(series: int, slices: int, size: int) -> Path:
    from dicom_ingest.synthetic import write_study

    folder = OUT / f"dl-{series}x{slices}-{size}"
    if not (folder / ".complete").exists():
        print(f"writing a {series} x {slices}-slice {size}² CT to {folder} ...", flush=True)
        write_study(folder, series=series, slices=slices, size=size, patient=PATIENT)
        (folder / ".complete").touch()
    return folder


def _env(work: Path, s3: SeaweedFS) -> dict[str, str]:
    return {
        **os.environ,
        "ZB_DATA_DIR": str(work),
        "ZB_STORAGE_URL": f"s3://{BUCKET}/{PREFIX}",
        "ZB_S3_ENDPOINT_URL": s3.endpoint,
        "ZB_S3_ACCESS_KEY": S3_ACCESS_KEY,
        "ZB_S3_SECRET_KEY": S3_SECRET_KEY,
        "ZB_LOG_LEVEL": "WARNING",
        "ZB_STUDY_QUIET_SECONDS": "1",
        "ZB_PUBLIC_URL": "http://127.0.0.1",
        "ZB_RECIPIENT_IP_LIMIT": "1000",
    }


def _zb(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    done = subprocess.run([ZB, *args], env=env, input=stdin, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"zorgbericht {' '.join(args)} failed:\n{done.stderr}")
    return done.stdout


def _memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in kB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


def _headers(client: httpx.Client) -> dict[str, str]:
    """Cookies by hand: the ``Secure`` session cookie is not sent over plain http otherwise."""
    jar = {c.name: c.value for c in client.cookies.jar}
    return {
        "Cookie": "; ".join(f"{name}={value}" for name, value in jar.items()),
        "X-CSRF-Token": jar.get("zb_csrf", ""),
    }


def _sign_in(client: httpx.Client, code: str, work: Path) -> None:
    client.post("/api/v1/recipient/open", json={"code": code}).raise_for_status()
    client.post("/api/v1/recipient/terms", json={"accepted": True}, headers=_headers(client))
    dob = PATIENT["PatientBirthDate"]
    birth = f"{dob[:4]}-{dob[4:6]}-{dob[6:]}"
    client.post(
        "/api/v1/recipient/birth-date", json={"birth_date": birth}, headers=_headers(client)
    ).raise_for_status()
    newest = max((work / "sms").glob("*.json"))
    sms = re.search(r"\b(\d{6})\b", json.loads(newest.read_text())["body"])
    assert sms
    answer = client.post(
        "/api/v1/recipient/sms-code", json={"code": sms.group(1)}, headers=_headers(client)
    )
    answer.raise_for_status()


def _wait_ready(api: httpx.Client, share_id: int) -> None:
    deadline = time.monotonic() + 1800
    while api.get(f"/api/v1/shares/{share_id}").json()["state"] != "ready":
        if time.monotonic() > deadline:
            sys.exit("the share never became ready")
        time.sleep(1)


def raw_read(s3: SeaweedFS) -> tuple[float, int]:
    """Read every instance object of the study from the store; return seconds and bytes."""
    client = boto3.client(
        "s3",
        endpoint_url=s3.endpoint,
        aws_access_key_id=S3_ACCESS_KEY,
        aws_secret_access_key=S3_SECRET_KEY,
        region_name="us-east-1",
    )
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=PREFIX):
        keys += [o["Key"] for o in page.get("Contents", []) if o["Key"].endswith(".dcm")]
    started, total = time.perf_counter(), 0
    for key in keys:
        body = client.get_object(Bucket=BUCKET, Key=key)["Body"]
        for chunk in body.iter_chunks(1024 * 1024):
            total += len(chunk)
    return time.perf_counter() - started, total


def zip_read(base: str, code: str, work: Path, pid: int) -> tuple[float, int, int, int]:
    """Download the DICOM ZIP; return seconds, bytes, Content-Length and peak RSS growth (kB)."""
    with httpx.Client(base_url=base, timeout=600) as client:
        _sign_in(client, code, work)
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        before = _memory(pid)["VmRSS"]
        started, total = time.perf_counter(), 0
        url = "/api/v1/recipient/download?format=dicom&study=all"
        with client.stream("GET", url, headers=_headers(client)) as answer:
            answer.raise_for_status()
            length = int(answer.headers["content-length"])
            for chunk in answer.iter_raw(1024 * 1024):
                total += len(chunk)
        seconds = time.perf_counter() - started
    return seconds, total, length, _memory(pid)["VmHWM"] - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=2)
    parser.add_argument("--slices", type=int, default=1000)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    folder = study_folder(args.series, args.slices, args.size)
    with (
        tempfile.TemporaryDirectory(prefix="zb-bench-dl-") as tmp,
        SeaweedFS() as s3,
    ):
        work = Path(tmp) / "work"
        env = _env(work, s3)
        _zb(env, "tenant", "create", "bench", "--name", "Bench", "--ae", "STORESCU")
        key = _zb(env, "apikey", "create", "--tenant", "bench").strip().splitlines()[-1]
        print("importing into SeaweedFS ...", flush=True)
        _zb(env, "import", str(folder), "--tenant", "bench")
        port = free_port()
        server = subprocess.Popen(
            [ZB, "serve", "--no-dicom", "--port", str(port)], env=env, start_new_session=True
        )
        try:
            wait_for_port(port, 60, server)
            run(args, s3, work, f"http://127.0.0.1:{port}", key, server.pid)
        finally:
            server.terminate()
            server.wait(30)


def run(args: argparse.Namespace, s3: SeaweedFS, work: Path, base: str, key: str, pid: int) -> None:
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}) as api:
        uid = api.get("/api/v1/studies").json()[0]["study_uid"]
        share = api.post(
            "/api/v1/shares",
            json={
                "study_uids": [uid],
                "recipient": "patient",
                "delivery": "url",
                "phone": "0612345678",
                "language": "nl",
            },
        ).json()
        print("waiting until the study is stable and previewed ...", flush=True)
        _wait_ready(api, share["id"])
    code = share["url"].split("code=", 1)[1]
    for run_no in range(1, args.runs + 1):
        raw_s, raw_bytes = raw_read(s3)
        zip_s, zip_bytes, length, growth = zip_read(base, code, work, pid)
        assert zip_bytes == length, f"Content-Length {length} but {zip_bytes} bytes came"
        raw_rate, zip_rate = raw_bytes / raw_s / 1e6, zip_bytes / zip_s / 1e6
        print(
            f"run {run_no}: raw store {raw_bytes / 1e6:.0f} MB in {raw_s:.2f} s"
            f" = {raw_rate:.0f} MB/s | DICOM ZIP via uvicorn {zip_bytes / 1e6:.0f} MB"
            f" in {zip_s:.2f} s = {zip_rate:.0f} MB/s"
            f" | ratio {zip_rate / raw_rate:.2f} (target >= 0.8)"
            f" | server peak RSS growth {growth / 1024:.1f} MB (target <= 32)",
            flush=True,
        )


if __name__ == "__main__":
    main()
