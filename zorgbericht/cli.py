"""The ``zorgbericht`` command line (DESIGN §8). The process entry point: it alone may start
the DICOM node from ``dicom_ingest``."""

from __future__ import annotations

import json
import secrets
import shutil
import signal
import sys
import tempfile
import threading
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from zorgbericht import worker
from zorgbericht.audit import atna
from zorgbericht.audit import service as audit
from zorgbericht.db import transaction, utcnow
from zorgbericht.errors import DomainError
from zorgbericht.runtime import Runtime, build_runtime, configure_logging
from zorgbericht.settings import Settings
from zorgbericht.shares import service as shares
from zorgbericht.staging import service as staging
from zorgbericht.tenants import service as tenants
from zorgbericht.tenants.models import Tenant

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Share imaging studies through a secure 14-day link.",
)
tenant_app = typer.Typer(no_args_is_help=True, help="Institutions.")
user_app = typer.Typer(no_args_is_help=True, help="Staff accounts.")
apikey_app = typer.Typer(no_args_is_help=True, help="API keys for PACS integrations.")
audit_app = typer.Typer(no_args_is_help=True, help="The audit trail.")
app.add_typer(tenant_app, name="tenant")
app.add_typer(user_app, name="user")
app.add_typer(apikey_app, name="apikey")
app.add_typer(audit_app, name="audit")
err = Console(stderr=True)


def _runtime() -> Runtime:
    settings = Settings()
    configure_logging(settings.log_level)
    return build_runtime(settings)


def _web_runtime() -> Runtime:
    """A runtime whose share API can ask the tenant's PACS about studies not staged."""
    from dicom_ingest.pull import PacsClient

    runtime = _runtime()
    runtime.pacs = PacsClient(runtime.settings.dicom_ae_title)
    return runtime


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


# -- processes -------------------------------------------------------------------------


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="address of the web app")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port of the web app")] = 8000,
    dicom_port: Annotated[
        int | None, typer.Option(help="DICOM port [default: ZB_DICOM_PORT]")
    ] = None,
    no_dicom: Annotated[
        bool, typer.Option("--no-dicom", help="do not run the DICOM receiver")
    ] = False,
    no_worker: Annotated[
        bool, typer.Option("--no-worker", help="do not run the background worker")
    ] = False,
) -> None:
    """Run the web app, plus the DICOM receiver and the background worker."""
    runtime = _web_runtime()
    _serve(runtime, host, port, dicom_port, dicom=not no_dicom, background=not no_worker)


def _serve(
    runtime: Runtime, host: str, port: int, dicom_port: int | None, *, dicom: bool, background: bool
) -> None:
    import uvicorn

    from zorgbericht.app import create_app

    node = _start_dicom(runtime, dicom_port) if dicom else None
    stop = worker.start_thread(runtime)[1] if background else None
    # uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown; this handler turns that
    # into SystemExit so the DICOM node drains its spool and the worker stops cleanly.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _exit_cleanly)
    try:
        uvicorn.run(
            create_app(runtime=runtime),
            host=host,
            port=port,
            log_level=runtime.settings.log_level.lower(),
            proxy_headers=True,
        )
    finally:
        if stop:
            stop.set()
        if node:
            _stop_dicom(node)
        runtime.close()


def _exit_cleanly(signum: int, _frame: object) -> None:
    raise SystemExit(0)


def _start_dicom(runtime: Runtime, port: int | None):  # type: ignore[no-untyped-def]
    from dicom_ingest.pull import PacsClient, Puller
    from dicom_ingest.server import start_dicom_server
    from dicom_ingest.stager import StagerProcess

    stager = StagerProcess(settings=runtime.settings, store=runtime.store)
    stager.start()
    server = start_dicom_server(
        settings=runtime.settings, sessions=runtime.sessions, pipeline=stager, port=port
    )
    puller = Puller(
        settings=runtime.settings,
        sessions=runtime.sessions,
        client=PacsClient(runtime.settings.dicom_ae_title),
    )
    puller.start()
    return server, stager, puller


def _stop_dicom(node) -> None:  # type: ignore[no-untyped-def]
    server, stager, puller = node
    puller.close()
    server.shutdown()
    stager.close()


def _wait_for_signal() -> None:
    stopped = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopped.set())
    stopped.wait()


@app.command()
def dicom(
    port: Annotated[int | None, typer.Option(help="DICOM port [default: ZB_DICOM_PORT]")] = None,
) -> None:
    """Run only the DICOM receiver (scaled deployments)."""
    runtime = _runtime()
    node = _start_dicom(runtime, port)
    try:
        _wait_for_signal()
    finally:
        _stop_dicom(node)
        runtime.close()


@app.command("worker")
def worker_command() -> None:
    """Run only the background worker (scaled deployments)."""
    runtime = _runtime()
    thread, stop = worker.start_thread(runtime)
    try:
        _wait_for_signal()
    finally:
        stop.set()
        thread.join(timeout=10)
        runtime.close()


# -- tenants, users, keys --------------------------------------------------------------


@tenant_app.command("create")
def tenant_create(
    slug: str,
    name: Annotated[str, typer.Option(help="display name used in mails and pages")],
    ae: Annotated[list[str], typer.Option(help="calling AE title allowed to send to us")],
    pacs: Annotated[
        str | None, typer.Option(help="PACS for C-FIND/C-MOVE, as AET@HOST:PORT")
    ] = None,
    language: Annotated[str, typer.Option(help="default language: nl or en")] = "nl",
) -> None:
    """Create an institution."""
    runtime = _runtime()
    try:
        with transaction(runtime.sessions) as session:
            tenant = tenants.create_tenant(
                session=session, slug=slug, name=name, ae_titles=ae, pacs=pacs, language=language
            )
            typer.echo(f"tenant {tenant.slug} created (AE titles: {', '.join(sorted(ae))})")
            typer.echo(
                f"PACS launch secret (configure it in the PACS button): {tenant.launch_secret}"
            )
    except DomainError as exc:
        raise _fail(exc.detail) from None


@user_app.command("create")
def user_create(
    email: str,
    tenant: Annotated[str, typer.Option(help="tenant slug")],
    role: Annotated[str, typer.Option(help="staff or admin")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="read the password from standard input")
    ] = False,
    name: Annotated[str, typer.Option(help="display name")] = "",
) -> None:
    """Create a staff account."""
    if not password_stdin:
        raise _fail("pass the password on standard input with --password-stdin")
    password = sys.stdin.readline().rstrip("\r\n")
    runtime = _runtime()
    try:
        with transaction(runtime.sessions) as session:
            owner = tenants.get_tenant(session=session, slug=tenant)
            user = tenants.create_user(
                session=session, tenant=owner, email=email, password=password, role=role, name=name
            )
            typer.echo(f"user {user.email} ({user.role}) created in {owner.slug}")
    except DomainError as exc:
        raise _fail(exc.detail) from None


@apikey_app.command("create")
def apikey_create(
    tenant: Annotated[str, typer.Option(help="tenant slug")],
    label: Annotated[str, typer.Option(help="what the key is for")] = "",
) -> None:
    """Print a new API key (the only time it is shown)."""
    runtime = _runtime()
    try:
        with transaction(runtime.sessions) as session:
            owner = tenants.get_tenant(session=session, slug=tenant)
            key, _ = tenants.create_api_key(session=session, tenant=owner, label=label)
    except DomainError as exc:
        raise _fail(exc.detail) from None
    typer.echo(key)


# -- staging ---------------------------------------------------------------------------


@app.command("import")
def import_command(
    path: Annotated[Path, typer.Argument(help="folder, DICOMDIR or ZIP of DICOM files")],
    tenant: Annotated[str, typer.Option(help="tenant slug")],
) -> None:
    """Stage DICOM files from disk, with a progress bar."""
    runtime = _runtime()
    try:
        with transaction(runtime.sessions) as session:
            tenant_id = tenants.get_tenant(session=session, slug=tenant).id
    except DomainError as exc:
        raise _fail(exc.detail) from None
    result = _import(runtime, path, tenant_id, show_progress=True)
    typer.echo(
        f"staged {result.staged} instances of {len(result.studies)} stud"
        f"{'y' if len(result.studies) == 1 else 'ies'}; skipped {result.skipped} "
        f"non-DICOM files; refused {result.refused} unreadable"
    )
    runtime.close()
    if result.refused:
        raise typer.Exit(2)


def _import(runtime: Runtime, path: Path, tenant_id: int, *, show_progress: bool):  # type: ignore[no-untyped-def]
    from dicom_ingest.importer import import_path
    from dicom_ingest.pipeline import Pipeline

    # A private spool: a DICOM node running on the same data folder keeps its own.
    spool = runtime.settings.data_dir / "import-spool" / secrets.token_hex(8)
    pipeline = Pipeline(
        settings=runtime.settings,
        store=runtime.store,
        sessions=runtime.sessions,
        spool=spool,
        recover=False,
    )
    pipeline.start()
    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed} files"),
        TextColumn("{task.fields[rate]} instances/s"),
        TimeElapsedColumn(),
    ]
    try:
        with Progress(*columns, console=err, disable=not show_progress) as bar:
            task = bar.add_task("importing", total=None, rate="0")
            started = datetime.now()

            def tick(_: str) -> None:
                elapsed = max((datetime.now() - started).total_seconds(), 1e-3)
                done = bar.tasks[0].completed + 1
                bar.update(task, advance=1, rate=f"{done / elapsed:.0f}")

            result = import_path(
                path=path,
                tenant_id=tenant_id,
                pipeline=pipeline,
                actor=audit.Actor("cli", "import"),
                progress=tick,
            )
        with transaction(runtime.sessions) as session:
            staging.settle_studies(
                session=session,
                quiet=timedelta(seconds=runtime.settings.study_quiet_seconds),
                force_uids=[(tenant_id, uid) for uid in result.studies],
            )
    except FileNotFoundError as exc:
        raise _fail(str(exc)) from None
    finally:
        pipeline.close()
        shutil.rmtree(spool, ignore_errors=True)
    return result


@app.command()
def studies(
    tenant: Annotated[str | None, typer.Option(help="only this tenant")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """List what is staged."""
    runtime = _runtime()
    rows = []
    with transaction(runtime.sessions) as session:
        from sqlalchemy import select

        from zorgbericht.tenants.models import Tenant

        query = select(Tenant).order_by(Tenant.slug)
        if tenant:
            query = query.where(Tenant.slug == tenant)
        for owner in session.scalars(query):
            for study in staging.list_studies(session=session, tenant_id=owner.id):
                rows.append({"tenant": owner.slug, **study.model_dump(mode="json")})
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        typer.echo(
            f"{row['tenant']:12} {row['state']:9} {row['patient_id'] or '-':14} "
            f"{row['study_date'] or '-':10} {'/'.join(row['modalities']):8} "
            f"{row['series_count']:3} series {row['instance_count']:5} inst  "
            f"{row['description'] or ''}"
        )
    if not rows:
        typer.echo("nothing staged")


@app.command()
def purge() -> None:
    """Expire and destroy what is due now, and the trail past retention (the worker does too)."""
    from zorgbericht.db import utcnow
    from zorgbericht.shares.purge import purge as run_purge

    runtime, now = _runtime(), utcnow()
    with transaction(runtime.sessions) as session:
        report = run_purge(session=session, store=runtime.store, settings=runtime.settings, now=now)
    removed = 0
    while True:  # the trail's retention, in bounded transactions
        with transaction(runtime.sessions) as session:
            batch = audit.prune(
                session=session, now=now, retention=runtime.settings.audit_retention
            )
        removed += batch
        if not batch:
            break
    typer.echo(
        f"expired {report.expired} shares; purged {report.shares_purged} shares and "
        f"{report.studies_purged} studies ({report.objects_deleted} objects); "
        f"removed {removed} audit events past retention"
    )


# -- audit -----------------------------------------------------------------------------


@audit_app.command("verify")
def audit_verify() -> None:
    """Check the hash chain; exit 1 and name the first broken row when it is broken."""
    runtime = _runtime()
    with transaction(runtime.sessions) as session:
        report = audit.verify(session=session)
    if report.ok:
        typer.echo(f"audit trail intact: {report.checked} events")
        return
    raise _fail(
        f"audit trail broken at event {report.first_broken_seq}: {report.reason} "
        f"({report.checked} events before it are intact)"
    )


@audit_app.command("export")
def audit_export(
    tenant: Annotated[str | None, typer.Option(help="only this tenant")] = None,
    since: Annotated[datetime | None, typer.Option(help="from this UTC time on")] = None,
    fmt: Annotated[str, typer.Option("--format", help="jsonl or csv")] = "jsonl",
) -> None:
    """Write the audit trail to standard output."""
    if fmt not in ("jsonl", "csv"):
        raise _fail("--format must be jsonl or csv")
    runtime = _runtime()
    with transaction(runtime.sessions) as session:
        tenant_id = tenants.get_tenant(session=session, slug=tenant).id if tenant else None
        if since is not None and since.tzinfo is None:
            from datetime import UTC

            since = since.replace(tzinfo=UTC)
    for chunk in audit.export(sessions=runtime.sessions, tenant_id=tenant_id, since=since, fmt=fmt):
        sys.stdout.write(chunk)
    with transaction(runtime.sessions) as session:
        audit.record(
            session=session,
            event=audit.Ev.audit_exported,
            actor=audit.Actor("cli", "audit-export"),
            tenant_id=tenant_id,
            details={"format": fmt, "since": since.isoformat() if since else None},
        )


@audit_app.command("forward")
def audit_forward() -> None:
    """Send the trail to the ATNA collector (ZB_ATNA_URL) now; print how many events it took."""
    runtime = _runtime()
    if not runtime.settings.atna_url:
        raise _fail("ZB_ATNA_URL is not set: there is no ATNA collector to forward to")
    sent, error = atna.forward_backlog(sessions=runtime.sessions, settings=runtime.settings)
    typer.echo(f"forwarded {sent} audit events")
    if error:
        raise _fail(f"the collector did not take the rest: {error}")


# -- demo ------------------------------------------------------------------------------

DEMO_AE_TITLES = ["STORESCU", "ECHOSCU", "FINDSCU", "MOVESCU", "DEMO-MODALITY"]


@app.command()
def demo(
    host: Annotated[str, typer.Option(help="address of the web app")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port of the web app")] = 8000,
    dicom_port: Annotated[
        int | None, typer.Option(help="DICOM port [default: ZB_DICOM_PORT]")
    ] = None,
) -> None:
    """Set up a demo tenant, an API key and a synthetic study, then serve."""
    runtime = _web_runtime()
    with transaction(runtime.sessions) as session:
        from sqlalchemy import select

        owner = session.scalar(select(Tenant).where(Tenant.slug == "demo"))
        if owner is None:
            owner = tenants.create_tenant(
                session=session, slug="demo", name="Demo Ziekenhuis", ae_titles=DEMO_AE_TITLES
            )
        password = secrets.token_urlsafe(12)
        email = f"staff-{secrets.token_hex(3)}@demo.invalid"
        tenants.create_user(
            session=session,
            tenant=owner,
            email=email,
            password=password,
            role="admin",
            name="Demo admin",
        )
        key, _ = tenants.create_api_key(session=session, tenant=owner, label="demo")
        tenant_id = owner.id
    from dicom_ingest.synthetic import write_study

    with tempfile.TemporaryDirectory() as folder:
        study_uid = write_study(Path(folder), series=2, slices=30, size=256)
        _import(runtime, Path(folder), tenant_id, show_progress=False)
    link = _demo_share(runtime, tenant_id, study_uid)
    sms_folder = runtime.settings.data_dir / "sms"
    public = runtime.settings.public_url.rstrip("/")
    dport = dicom_port or runtime.settings.dicom_port
    typer.echo(
        f"""
zorgbericht demo is running
  web app        http://{host}:{port}/healthz   API docs http://{host}:{port}/api/docs
  public URL     {public}
  staff portal   http://{host}:{port}/staff/login   admin portal http://{host}:{port}/admin
  admin account  {email}  password {password}
  API key        {key}
  try            curl -H 'Authorization: Bearer {key}' http://{host}:{port}/api/v1/studies
  DICOM node     AE {runtime.settings.dicom_ae_title} on port {dport}
  calling AEs    {", ".join(DEMO_AE_TITLES)}
  push a study   storescu -aec {runtime.settings.dicom_ae_title} +sd +r 127.0.0.1 {dport} FOLDER/
  what's staged  zorgbericht studies
  recipient      {link}
                 date of birth 01-01-1970; SMS codes are written to {sms_folder}/
""",
        err=False,
    )
    _serve(runtime, host, port, dicom_port, dicom=True, background=True)


def _demo_share(runtime: Runtime, tenant_id: int, study_uid: str) -> str:
    """Share the demo study by URL, so a newcomer can walk the recipient pages."""
    from zorgbericht.shares.schemas import ShareIn

    with transaction(runtime.sessions) as session:
        created = shares.create_share(
            session=session,
            tenant=session.get(Tenant, tenant_id),
            actor=audit.Actor("cli", "demo"),
            share_in=ShareIn(
                study_uids=[study_uid], recipient="patient", delivery="url", phone="0612345678"
            ),
            settings=runtime.settings,
            pacs=None,
            now=utcnow(),
        )
        return created.url


def main() -> None:
    app()
