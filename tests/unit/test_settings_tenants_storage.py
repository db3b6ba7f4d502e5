"""Settings, tenants and the object store port."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from pydantic import ValidationError

from zorgbericht.errors import Conflict, Invalid
from zorgbericht.settings import Settings, parse_duration
from zorgbericht.storage import StorageUnavailable
from zorgbericht.storage.local import LocalStore
from zorgbericht.storage.s3 import S3Store
from zorgbericht.tenants import service as tenants


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("P14D", timedelta(days=14)),
        ("PT5M", timedelta(minutes=5)),
        ("300", timedelta(seconds=300)),
        ("P1DT2H", timedelta(days=1, hours=2)),
        ("P2W", timedelta(weeks=2)),
    ],
)
def test_durations_parse_iso8601_and_seconds(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["P", "14 days", "PT", "-5"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def test_production_refuses_the_placeholder_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZB_ENVIRONMENT", "production")
    with pytest.raises(ValidationError, match="ZB_SECRET_KEY"):
        Settings()
    monkeypatch.setenv("ZB_SECRET_KEY", "x" * 40)
    assert Settings().environment == "production"


def test_defaults_are_the_embedded_ones(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ZB_DATA_DIR", str(tmp_path))
    settings = Settings()
    assert settings.resolved_database_url.startswith("sqlite:///")
    assert settings.resolved_storage_url == (tmp_path / "objects").resolve().as_uri()
    assert settings.share_ttl == timedelta(days=14) and settings.study_quiet_seconds == 30


def test_password_hashes_use_owasp_argon2id_parameters() -> None:
    encoded = tenants.PASSWORDS.hash("correct horse battery")
    assert encoded.startswith("$argon2id$") and "m=19456,t=2,p=1" in encoded
    assert PasswordHasher().verify(encoded, "correct horse battery")


@pytest.mark.parametrize("title", ["", "A" * 17, "BACK\\SLASH", " "])
def test_bad_ae_titles_are_refused(title: str) -> None:
    with pytest.raises(Invalid):
        tenants.normalise_ae(title)


@pytest.mark.parametrize("spec", ["ORTHANC@host", "@host:104", "ORTHANC@host:99999"])
def test_bad_pacs_specs_are_refused(spec: str) -> None:
    with pytest.raises(Invalid, match="AET@HOST:PORT"):
        tenants.parse_pacs(spec)


@pytest.mark.peers
def test_an_ae_title_names_one_tenant_only(session) -> None:  # type: ignore[no-untyped-def]
    tenants.create_tenant(session=session, slug="a", name="A", ae_titles=["CT1"])
    with pytest.raises(Conflict, match="CT1"):
        tenants.create_tenant(session=session, slug="b", name="B", ae_titles=["CT1"])
    assert tenants.tenant_for_ae(session=session, ae_title="CT1 ").slug == "a"
    assert tenants.tenant_for_ae(session=session, ae_title="CT2") is None


@pytest.mark.peers
def test_api_keys_are_stored_hashed_and_resolve_to_their_tenant(session) -> None:  # type: ignore[no-untyped-def]
    tenant = tenants.create_tenant(session=session, slug="a", name="A", ae_titles=["CT1"])
    key, row = tenants.create_api_key(session=session, tenant=tenant, label="pacs")
    assert key not in row.key_hash and row.prefix in key
    assert tenants.tenant_for_api_key(session=session, key=key)[0].id == tenant.id
    assert tenants.tenant_for_api_key(session=session, key=key + "x") is None
    tenants.revoke_api_key(session=session, api_key=row)
    assert tenants.tenant_for_api_key(session=session, key=key) is None


def _contract(store) -> None:  # type: ignore[no-untyped-def]
    store.put_bytes("a/b/one.bin", b"1" * 10)
    source = Path(__file__)
    store.put_file("a/c/two.bin", source)
    assert store.get_bytes("a/b/one.bin") == b"1" * 10
    assert b"".join(store.open_stream("a/c/two.bin", 100)) == source.read_bytes()
    assert store.size("a/c/two.bin") == source.stat().st_size
    assert store.exists("a/b/one.bin") and not store.exists("a/b/none")
    with pytest.raises(KeyError):
        store.get_bytes("a/b/none")
    store.delete("a/b/none")  # deleting what is not there is fine
    assert store.delete_prefix("a/") == 2
    assert not store.exists("a/b/one.bin")
    store.check()


def test_local_store_keeps_the_contract(tmp_path: Path) -> None:
    _contract(LocalStore(tmp_path / "objects"))
    with pytest.raises(ValueError, match="escapes"):
        LocalStore(tmp_path / "objects").put_bytes("../outside", b"x")


@pytest.mark.peers
def test_s3_store_keeps_the_contract(s3) -> None:  # type: ignore[no-untyped-def]
    from infra.peers import S3_ACCESS_KEY, S3_SECRET_KEY

    store = S3Store(
        "zb-test",
        "contract",
        endpoint_url=s3.endpoint,
        access_key=S3_ACCESS_KEY,
        secret_key=S3_SECRET_KEY,
    )
    _contract(store)
    assert store.presign("x", 60).startswith(s3.endpoint)


@pytest.mark.peers
def test_s3_store_reports_wrong_credentials_and_absence_as_unavailable(s3) -> None:  # type: ignore[no-untyped-def]
    from infra.peers import S3_ACCESS_KEY, free_port

    wrong = S3Store(
        "zb-test", "", endpoint_url=s3.endpoint, access_key=S3_ACCESS_KEY, secret_key="wrong"
    )
    with pytest.raises(StorageUnavailable):
        wrong.put_bytes("x", b"1")
    gone = S3Store(
        "zb-test",
        "",
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        access_key="k",
        secret_key="s",
        timeout=1,
    )
    with pytest.raises(StorageUnavailable):
        gone.check()
