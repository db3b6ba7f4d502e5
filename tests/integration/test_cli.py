"""The ``zorgbericht`` command as an operator runs it: real processes, real storescu."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.fileset import FileSet

from infra.peers import free_port, wait_for_port
from tests.dicom_client import wait_until
from tests.samples import mixed_study

pytestmark = pytest.mark.peers
ZB = str(Path(sys.executable).parent / "zorgbericht")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "ZB_DATA_DIR": str(tmp_path / "var"),
        "ZB_DICOM_PORT": str(free_port()),
        "ZB_STUDY_QUIET_SECONDS": "1",
        "ZB_WORKER_INTERVAL_SECONDS": "0.2",
        "ZB_DICOM_HOST": "127.0.0.1",
        "TCP_NODELAY": "1",
    }


def zb(
    env: dict[str, str], *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ZB, *args], env=env, input=stdin, capture_output=True, text=True, timeout=300
    )


def studies(env: dict[str, str], *args: str) -> list[dict[str, object]]:
    result = zb(env, "studies", "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


@pytest.fixture
def server(env: dict[str, str]) -> Iterator[str]:
    assert (
        zb(
            env,
            "tenant",
            "create",
            "acme",
            "--name",
            "Acme Ziekenhuis",
            "--ae",
            "STORESCU",
            "--pacs",
            "ORTHANC@127.0.0.1:4242",
        ).returncode
        == 0
    )
    port = free_port()
    proc = subprocess.Popen(
        [ZB, "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for_port(port, proc=proc)
        wait_for_port(int(env["ZB_DICOM_PORT"]), proc=proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=60)[0]
        assert proc.returncode == 0, output


def test_storescu_into_serve_lists_a_stable_study_with_correct_counts(
    env: dict[str, str], server: str, tmp_path: Path
) -> None:
    study_uid, files = mixed_study(tmp_path / "in")
    sent = subprocess.run(
        [
            "storescu",
            "-aec",
            "ZORGBERICHT",
            "+sd",
            "+r",
            "-xf",
            str(Path(__file__).parent.parent / "data" / "storescu-mixed.cfg"),
            "Mixed",
            "127.0.0.1",
            env["ZB_DICOM_PORT"],
            str(tmp_path / "in"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert sent.returncode == 0, sent.stderr

    def stable() -> dict[str, object] | None:
        found = [s for s in studies(env) if s["study_uid"] == study_uid]
        return found[0] if found and found[0]["state"] == "stable" else None

    study = wait_until(stable, timeout=60, interval=0.5)
    assert study["tenant"] == "acme"
    assert study["instance_count"] == len(files) and study["series_count"] == len(files)
    assert study["patient_id"] == "MIX0001" and study["birth_date"] == "1980-02-29"
    assert zb(env, "audit", "verify").returncode == 0


def test_api_lists_studies_for_a_valid_key_only(
    env: dict[str, str], server: str, tmp_path: Path
) -> None:
    from dicom_ingest.synthetic import write_study

    write_study(tmp_path / "a", series=1, slices=2, size=64)
    assert zb(env, "import", str(tmp_path / "a"), "--tenant", "acme").returncode == 0
    key = zb(env, "apikey", "create", "--tenant", "acme", "--label", "pacs").stdout.strip()
    assert key.startswith("zb_")
    with httpx.Client(base_url=server) as client:
        assert client.get("/healthz").json()["status"] == "ok"
        assert "swagger" in client.get("/api/docs").text.lower()
        assert "/api/v1/studies" in client.get("/api/openapi.json").json()["paths"]
        assert client.get("/api/v1/studies").status_code == 401
        assert (
            client.get(
                "/api/v1/studies", headers={"Authorization": "Bearer zb_nope_nope"}
            ).status_code
            == 401
        )
        auth = {"Authorization": f"Bearer {key}"}
        listed = client.get("/api/v1/studies", headers=auth).json()
        assert [s["instance_count"] for s in listed] == [2]
        assert listed[0]["state"] == "stable" and listed[0]["modalities"] == ["CT"]
        assert (
            client.get("/api/v1/studies", params={"patient_id": "nobody"}, headers=auth).json()
            == []
        )


def test_import_takes_a_folder_a_zip_and_a_dicomdir(env: dict[str, str], tmp_path: Path) -> None:
    assert zb(env, "tenant", "create", "acme", "--name", "Acme", "--ae", "STORESCU").returncode == 0
    study_uid, files = mixed_study(tmp_path / "folder", with_process14=False)
    (tmp_path / "folder" / "notes.txt").write_text("not DICOM")
    result = zb(env, "import", str(tmp_path / "folder"), "--tenant", "acme")
    assert result.returncode == 0, result.stderr
    assert f"staged {len(files)} instances of 1 study; skipped 1" in result.stdout
    assert "instances/s" in result.stderr

    from dicom_ingest.synthetic import write_study

    zipped_uid = write_study(tmp_path / "z", series=2, slices=3, size=64)
    with zipfile.ZipFile(tmp_path / "study.zip", "w") as archive:
        for file in (tmp_path / "z").iterdir():
            archive.write(file, f"export/{file.name}")
    assert zb(env, "import", str(tmp_path / "study.zip"), "--tenant", "acme").returncode == 0

    media_uid = write_study(tmp_path / "m", series=1, slices=4, size=64)
    fileset = FileSet()
    for file in sorted((tmp_path / "m").iterdir()):
        fileset.add(pydicom.dcmread(file))
    fileset.write(tmp_path / "cd")
    assert zb(env, "import", str(tmp_path / "cd" / "DICOMDIR"), "--tenant", "acme").returncode == 0

    counts = {s["study_uid"]: (s["instance_count"], s["state"]) for s in studies(env)}
    assert counts == {
        study_uid: (len(files), "stable"),
        zipped_uid: (6, "stable"),
        media_uid: (4, "stable"),
    }


def test_bad_operator_input_gets_a_clear_error(env: dict[str, str], tmp_path: Path) -> None:
    bad_ae = zb(env, "tenant", "create", "acme", "--name", "Acme", "--ae", "WAY-TOO-LONG-AE-TITLE")
    assert bad_ae.returncode != 0 and "AE title" in bad_ae.stderr
    assert zb(env, "tenant", "create", "acme", "--name", "Acme", "--ae", "STORESCU").returncode == 0
    taken = zb(env, "tenant", "create", "other", "--name", "Other", "--ae", "STORESCU")
    assert taken.returncode != 0 and "already belong" in taken.stderr
    short = zb(
        env,
        "user",
        "create",
        "a@b.nl",
        "--tenant",
        "acme",
        "--role",
        "staff",
        "--password-stdin",
        stdin="short\n",
    )
    assert short.returncode != 0 and "at least 12" in short.stderr
    good = zb(
        env,
        "user",
        "create",
        "a@b.nl",
        "--tenant",
        "acme",
        "--role",
        "admin",
        "--password-stdin",
        stdin="correct horse battery\n",
    )
    assert good.returncode == 0, good.stderr
    missing = zb(env, "import", str(tmp_path / "nothing-here"), "--tenant", "acme")
    assert missing.returncode != 0 and "nothing-here" in missing.stderr
    assert zb(env, "apikey", "create", "--tenant", "ghost").returncode != 0


def test_demo_stages_a_study_and_prints_a_working_api_key(env: dict[str, str]) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [ZB, "demo", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        wait_for_port(port, timeout=120, proc=proc)
        assert proc.stdout is not None
        lines = []
        while not any(line.strip().startswith("recipient") for line in lines):
            lines.append(proc.stdout.readline())
        key = next(line.split()[-1] for line in lines if line.strip().startswith("API key"))
        listed = httpx.get(
            f"http://127.0.0.1:{port}/api/v1/studies", headers={"Authorization": f"Bearer {key}"}
        ).json()
        assert len(listed) == 1 and listed[0]["state"] == "stable"
        assert listed[0]["instance_count"] == 60
        link = next(line.split()[-1] for line in lines if line.strip().startswith("recipient"))
        assert "?code=" in link
        opened = httpx.get(f"http://127.0.0.1:{port}/" + link.split("/", 3)[-1])
        assert opened.status_code == 200 and "__Host-zb_session" in opened.headers["set-cookie"]
        shares = httpx.get(
            f"http://127.0.0.1:{port}/api/v1/shares", headers={"Authorization": f"Bearer {key}"}
        ).json()
        assert [s["state"] for s in shares] == ["ready"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def test_purge_destroys_studies_no_share_needs(env: dict[str, str], tmp_path: Path) -> None:
    from dicom_ingest.synthetic import write_study

    assert zb(env, "tenant", "create", "acme", "--name", "Acme", "--ae", "STORESCU").returncode == 0
    write_study(tmp_path / "s", series=1, slices=2, size=32)
    assert zb(env, "import", str(tmp_path / "s"), "--tenant", "acme").returncode == 0
    kept = zb(env, "purge")
    assert kept.returncode == 0 and "0 studies" in kept.stdout
    assert len(studies(env)) == 1
    gone = zb({**env, "ZB_UNSHARED_RETENTION": "0"}, "purge")
    # two instances, each: the DICOM file, its thumbnail and its preview
    assert gone.returncode == 0 and "1 studies (6 objects)" in gone.stdout
    assert studies(env) == []
    assert zb(env, "audit", "verify").returncode == 0
