"""Stage received instances: spool to local disk, upload, index in batches, render previews.

The C-STORE answer waits only for the durable spool file. Uploading, indexing and preview
rendering run on their own threads (and a separate process for rendering), so they never
slow the association. A spooled file is deleted only once it is in the object store, in
the index and previewed; after a crash, whatever is left in the spool is staged again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import timedelta
from multiprocessing import get_context
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicom_ingest import previews
from dicom_ingest.meta import StudyRef, UndecodableInstance, read_meta_file
from zorgbericht.audit import service as audit
from zorgbericht.db import transaction, utcnow
from zorgbericht.settings import Settings
from zorgbericht.staging import service as staging
from zorgbericht.staging.models import PreviewState
from zorgbericht.staging.schemas import InstanceMeta, StoredInstance
from zorgbericht.storage import ObjectStore, StorageUnavailable

log = logging.getLogger(__name__)

PREAMBLE = bytes(128)


class StorageDown(RuntimeError):
    """The object store or the spool cannot take instances now (answer 0xA700)."""


def spool_write(spool: Path, tenant_id: int, data: bytes, fsync: bool) -> Path:
    """Write one instance durably into the spool; raise ``StorageDown`` when the disk fails.

    The file is created under its final name, which carries its length, and fsynced: one
    sync per instance (the journal commit it forces also holds the new directory entry on
    ext4 and XFS). A crash mid-write leaves a file shorter than its name says; recovery
    drops it, as that instance was never acknowledged.
    """
    folder = spool / str(tenant_id)
    final = folder / f"{uuid.uuid4().hex}.{len(data)}.dcm"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(final, "xb") as fh:
            fh.write(data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
    except OSError as exc:
        final.unlink(missing_ok=True)
        raise StorageDown(f"spool: {exc.strerror}") from exc
    return final


def complete_spool_file(path: Path) -> bool:
    """False for a file a crash cut short (its name says how long it must be)."""
    parts = path.name.split(".")
    if len(parts) == 3 and parts[1].isdigit():
        return path.stat().st_size == int(parts[1])
    return True  # a file put there by hand: judged by whether it parses


@dataclass
class Refused:
    """Instances of one study refused in a batch, counted per DIMSE status and SOP class."""

    patient_id: str | None = None
    bsn: str | None = None
    statuses: Counter[str] = field(default_factory=Counter)
    sop_classes: Counter[str] = field(default_factory=Counter)

    def merge(self, other: Refused) -> None:
        self.patient_id = self.patient_id or other.patient_id
        self.bsn = self.bsn or other.bsn
        self.statuses.update(other.statuses)
        self.sop_classes.update(other.sop_classes)


@dataclass
class Batch:
    """Instances that arrived together: one association, or one import run."""

    tenant_id: int
    actor: audit.Actor
    kind: str = "association"
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    studies: Counter[str] = field(default_factory=Counter)
    study_bytes: Counter[str] = field(default_factory=Counter)
    patients: dict[str, InstanceMeta] = field(default_factory=dict)
    refused: dict[str, Refused] = field(default_factory=dict)  # by study UID, "" unreadable
    pending: int = 0
    ended: str | None = None  # "released" or "aborted"
    finalized: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)


def count_refusal(batch: Batch, *, status: int, ref: StudyRef, sop_class_uid: str | None) -> None:
    """Count one refused instance towards its batch's audit summary (never after the end)."""
    with batch.lock:
        if batch.ended is not None:  # its summary is on its way: the count would be lost
            log.warning("instance refused after its association ended: not in the audit summary")
            return
        refused = batch.refused.setdefault(ref.study_uid, Refused())
        refused.merge(Refused(ref.patient_id, ref.bsn))
        refused.statuses[f"{status:04X}"] += 1
        if sop_class_uid:
            refused.sop_classes[sop_class_uid] += 1


@dataclass
class Item:
    tenant_id: int
    path: Path
    meta: InstanceMeta
    batch: Batch | None
    object_key: str = ""
    size: int = 0
    sha256: str = ""
    instance_id: int | None = None


class Hooks:
    """What a pipeline tells the process that feeds it (see ``stager.StagerProcess``)."""

    def recovered(self, size: int) -> None:
        """An instance left in the spool by an earlier run was queued again."""

    def done(self, size: int) -> None:
        """An instance is fully staged and its spool file deleted."""

    def storage(self, down: bool) -> None:
        """The object store went down or came back."""


class Pipeline:
    """Owns the spool and the background threads of one ingest node."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: ObjectStore,
        sessions: sessionmaker[Session],
        hooks: Hooks | None = None,
        spool: Path | None = None,
        recover: bool = True,
    ) -> None:
        """``spool`` defaults to the node's spool; an import passes a private one and
        ``recover=False`` so it never takes over what a running node has spooled."""
        self.settings = settings
        self.hooks = hooks or Hooks()
        self.recover = recover
        self._paths: set[Path] = set()
        self.store = store
        self.sessions = sessions
        self.spool = spool or settings.spool_dir
        self.spool.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._uploads: queue.Queue[Item | None] = queue.Queue()
        self._index: queue.Queue[Item | None] = queue.Queue()
        self._previews: queue.Queue[tuple[Item | None, Future[previews.Rendered]] | None] = (
            queue.Queue()
        )
        self._active: Counter[tuple[int, str]] = Counter()  # (tenant, study) -> open users
        self._open_batches: list[Batch] = []
        self._in_flight = 0
        self._markers = 0  # batch summaries queued but not yet written
        self._spool_bytes = 0
        self._storage_ok_until = 0.0
        self._storage_down_reason: str | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._renderer = ProcessPoolExecutor(
            max_workers=max(1, settings.preview_processes), mp_context=get_context("spawn")
        )

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker threads and re-stage whatever a previous run left in the spool."""
        workers: list[tuple[str, Callable[[], None]]] = [
            *((f"zb-upload-{i}", self._upload_loop) for i in range(self.settings.upload_threads)),
            ("zb-index", self._index_loop),
            ("zb-previews", self._preview_loop),
            ("zb-heartbeat", self._heartbeat_loop),
        ]
        for name, target in workers:
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        if self.recover:
            self._recover_spool()

    def close(self, timeout: float = 30.0) -> None:
        self.drain(timeout)
        self._stop.set()
        for _ in range(self.settings.upload_threads):
            self._uploads.put(None)
        self._index.put(None)
        self._previews.put(None)
        for thread in self._threads:
            thread.join(timeout=5)
        self._renderer.shutdown(wait=True, cancel_futures=True)

    def drain(self, timeout: float = 60.0) -> bool:
        """Wait until everything accepted so far is uploaded, indexed and previewed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self._in_flight == 0 and self._markers == 0:
                    return True
            time.sleep(0.02)
        return False

    # -- accepting ---------------------------------------------------------------------

    def open_batch(self, *, tenant_id: int, actor: audit.Actor, kind: str = "association") -> Batch:
        batch = Batch(tenant_id=tenant_id, actor=actor, kind=kind)
        with self._lock:
            self._open_batches.append(batch)
        return batch

    def check_storage(self) -> None:
        """Raise ``StorageDown`` unless the object store answered recently (cached 2 s)."""
        if time.monotonic() < self._storage_ok_until:
            return
        try:
            self.store.check()
        except StorageUnavailable as exc:
            self._storage_down_reason = str(exc)
            raise StorageDown(str(exc)) from exc
        self._storage_down_reason = None
        self._storage_ok_until = time.monotonic() + 2.0

    def accept(self, batch: Batch, meta: InstanceMeta, data: bytes) -> None:
        """Make one Part 10 byte stream durable in the spool and queue it for staging.

        Returns once the spool file is written (and fsynced when configured); raises
        ``StorageDown`` when the store is unreachable or the spool is full, in which case
        nothing of the instance is kept.
        """
        if self._storage_down_reason is not None:
            self.check_storage()
        if self._spool_bytes + len(data) > self.settings.spool_max_bytes:
            raise StorageDown("spool is full")
        path = spool_write(self.spool, batch.tenant_id, data, self.settings.spool_fsync)
        self.enqueue(batch, meta, path, len(data))

    def enqueue(self, batch: Batch, meta: InstanceMeta, path: Path, size: int) -> None:
        """Queue an instance already durable in the spool (once, however often it is told)."""
        with self._lock:
            if path in self._paths:
                return
            self._paths.add(path)
            self._in_flight += 1
            self._spool_bytes += size
            batch.pending += 1
            if batch.studies[meta.study_uid] == 0:
                self._active[(batch.tenant_id, meta.study_uid)] += 1
            batch.studies[meta.study_uid] += 1
            batch.study_bytes[meta.study_uid] += size
            batch.patients.setdefault(meta.study_uid, meta)
        self._uploads.put(Item(batch.tenant_id, path, meta, batch, size=size))

    def refuse(
        self, batch: Batch, *, status: int, ref: StudyRef, sop_class_uid: str | None
    ) -> None:
        """Count an instance answered with a failure status; audited when the batch ends."""
        count_refusal(batch, status=status, ref=ref, sop_class_uid=sop_class_uid)

    def end_batch(
        self, batch: Batch, *, aborted: bool, refused: dict[str, Refused] | None = None
    ) -> None:
        """Close a batch once; its audit summary is written when all its instances are indexed.

        ``refused`` adds refusals counted elsewhere (the DICOM server's side of a stager).
        """
        with batch.lock, self._lock:
            if batch.ended is not None:
                return
            for study_uid, counts in (refused or {}).items():
                batch.refused.setdefault(study_uid, Refused()).merge(counts)
            batch.ended = "aborted" if aborted else "released"
            ready = batch.pending == 0
            if ready:
                self._markers += 1
        if ready:
            self._index.put(Item(batch.tenant_id, Path(), _MARKER, batch))

    # -- upload ------------------------------------------------------------------------

    def _upload_loop(self) -> None:
        while (item := self._uploads.get()) is not None:
            backoff = 0.2
            while not self._stop.is_set():
                try:
                    self._upload(item)
                    break
                except FileNotFoundError:
                    log.error("spool file %s vanished before upload; skipped", item.path.name)
                    self._forget(item)
                    item = None
                    break
                except Exception as exc:  # store down, throttled, refusing: keep the spool
                    reason = str(exc) if isinstance(exc, StorageUnavailable) else type(exc).__name__
                    self._storage_down_reason = reason
                    self._storage_ok_until = 0.0
                    self.hooks.storage(True)
                    log.warning("upload failed (%s); retrying in %.1fs", reason, backoff)
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, 30.0)
            else:
                return
            if item is not None:
                self._index.put(item)

    def _upload(self, item: Item) -> None:
        digest = hashlib.sha256()
        with open(item.path, "rb") as fh:
            while chunk := fh.read(1024 * 1024):
                digest.update(chunk)
        item.sha256 = digest.hexdigest()
        item.size = item.path.stat().st_size
        item.object_key = staging.instance_key(
            item.tenant_id, item.meta.study_uid, item.meta.sop_uid
        )
        self.store.put_file(item.object_key, item.path, "application/dicom")
        if self._storage_down_reason is not None:
            self._storage_down_reason = None
            self.hooks.storage(False)

    # -- index -------------------------------------------------------------------------

    def _index_loop(self) -> None:
        while True:
            first = self._index.get()
            if first is None:
                return
            chunk = [first]
            while len(chunk) < 500:
                try:
                    nxt = self._index.get(timeout=0.05 if len(chunk) < 50 else 0)
                except queue.Empty:
                    break
                if nxt is None:
                    self._index.put(None)
                    break
                chunk.append(nxt)
            self._index_with_retry(chunk)

    def _index_with_retry(self, chunk: list[Item]) -> None:
        """Index a chunk; a chunk that keeps failing is retried item by item, so one bad
        instance (moved aside) never blocks the rest. A database that is down is waited for."""
        backoff, failures = 0.5, 0
        while not self._stop.is_set() or self._in_flight or self._markers:
            try:
                pending = self._index_chunk(chunk)
            except Exception as exc:  # parameters hidden by the engine: no patient data here
                failures += 1
                log.warning(
                    "indexing %d instances failed (%s); retrying in %.1fs",
                    len(chunk),
                    type(exc).__name__,
                    backoff,
                )
                if failures >= 3 and len(chunk) > 1:
                    for item in chunk:
                        self._index_with_retry([item])
                    return
                if failures >= 10 and self._database_answers():
                    self._quarantine(chunk[0])
                    return
                time.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            try:
                self._after_index(chunk, pending)
            except Exception:
                log.exception("after indexing %d instances", len(chunk))
            return

    def _database_answers(self) -> bool:
        try:
            with self.sessions() as session:
                session.execute(select(1))
            return True
        except Exception:
            return False

    def _quarantine(self, item: Item) -> None:
        """Move an instance the index keeps refusing aside, for an operator to look at."""
        if item.meta is _MARKER:
            with self._lock:
                self._markers -= 1
            return
        log.error("instance in %s cannot be indexed; moved aside as .bad", item.path.name)
        if item.path.exists():
            item.path.rename(item.path.with_suffix(".bad"))
        self._forget(item)
        self._batch_progress(item.batch)

    def _index_chunk(self, chunk: list[Item]) -> dict[tuple[int, str], int]:
        now = utcnow()
        pending: dict[tuple[int, str], int] = {}
        with transaction(self.sessions) as session:
            by_tenant: dict[int, list[StoredInstance]] = {}
            for item in chunk:
                if item.meta is not _MARKER:
                    by_tenant.setdefault(item.tenant_id, []).append(
                        StoredInstance(item.meta, item.object_key, item.size, item.sha256)
                    )
            for tenant_id, stored in by_tenant.items():
                ids = staging.index_instances(
                    session=session, tenant_id=tenant_id, items=stored, now=now
                )
                pending.update({(tenant_id, sop): i for sop, i in ids.items()})
            # Until its association is released, a study may be incomplete: flag it now, so
            # a crash or an abort leaves it flagged; the release summary clears the flag.
            for tenant_id, uids in _open_association_studies(chunk).items():
                staging.set_interrupted(
                    session=session, tenant_id=tenant_id, study_uids=uids, interrupted=True
                )
            for item in chunk:
                if item.meta is _MARKER and item.batch is not None:
                    self._finalize(session, item.batch)
        return pending

    def _after_index(self, chunk: list[Item], pending: dict[tuple[int, str], int]) -> None:
        for item in chunk:
            if item.meta is _MARKER:
                if item.batch is not None:
                    self._release_studies(item.batch)
                    item.batch.finalized.set()
                with self._lock:
                    self._markers -= 1
                continue
            instance_id = pending.get((item.tenant_id, item.meta.sop_uid))
            if instance_id is None:
                self._done(item)
            else:
                item.instance_id = instance_id
                self._previews.put((item, self._render(str(item.path))))
            self._batch_progress(item.batch)

    def _batch_progress(self, batch: Batch | None) -> None:
        if batch is None:
            return
        with self._lock:
            batch.pending -= 1
            ready = batch.pending == 0 and batch.ended is not None
            if ready:
                self._markers += 1
        if ready:
            self._index.put(Item(batch.tenant_id, Path(), _MARKER, batch))

    def _finalize(self, session: Session, batch: Batch) -> None:
        """Write the batch's audit summary: one event per study, as DICOM audit does."""
        aborted = batch.ended == "aborted"
        event = audit.Ev.study_imported if batch.kind == "import" else audit.Ev.instances_received
        for study_uid, count in batch.studies.items():
            meta = batch.patients[study_uid]
            audit.record(
                session=session,
                event=event,
                actor=batch.actor,
                tenant_id=batch.tenant_id,
                outcome=audit.Outcome.minor_failure if aborted else audit.Outcome.success,
                patient_id=meta.patient_id,
                bsn=meta.bsn,
                study_uids=[study_uid],
                details={
                    "instances": count,
                    "bytes": batch.study_bytes[study_uid],
                    "batch": batch.id,
                    "ended": batch.ended,
                },
            )
        if batch.kind == "association":
            staging.set_interrupted(
                session=session,
                tenant_id=batch.tenant_id,
                study_uids=batch.studies,
                interrupted=aborted,
            )
        _record_refusals(session, batch)

    def _release_studies(self, batch: Batch) -> None:
        with self._lock:
            for study_uid in batch.studies:
                key = (batch.tenant_id, study_uid)
                self._active[key] -= 1
                if self._active[key] <= 0:
                    del self._active[key]
            if batch in self._open_batches:
                self._open_batches.remove(batch)

    # -- previews ----------------------------------------------------------------------

    def _preview_loop(self) -> None:
        while (entry := self._previews.get()) is not None:
            item, future = entry
            try:
                self._store_previews(item, future)
            except Exception:
                log.exception("storing previews failed")
            if item is not None:
                self._done(item)

    def _render(self, path: str) -> Future[previews.Rendered]:
        """Submit to the renderer pool, replacing a pool a crashed worker broke."""
        try:
            return self._renderer.submit(previews.render_file, path)
        except BrokenProcessPool:
            log.error("preview renderer crashed; starting a new one")
            self._renderer = ProcessPoolExecutor(
                max_workers=max(1, self.settings.preview_processes), mp_context=get_context("spawn")
            )
            return self._renderer.submit(previews.render_file, path)

    def _store_previews(self, item: Item | None, future: Future[previews.Rendered]) -> None:
        assert item is not None and item.instance_id is not None
        instance_id, object_key = item.instance_id, item.object_key
        try:
            rendered = future.result()
        except Exception as exc:  # a crashed renderer must not stop the pipeline
            rendered = previews.Rendered(error=f"renderer failed: {type(exc).__name__}")
        state = PreviewState.failed if rendered.error else PreviewState.done
        backoff = 0.5
        while not self._stop.is_set():
            try:
                for kind, frame, jpeg in rendered.images:
                    self.store.put_bytes(
                        staging.preview_key(object_key, kind, frame), jpeg, "image/jpeg"
                    )
                with transaction(self.sessions) as session:
                    staging.mark_previews(
                        session=session, results=[(instance_id, state, rendered.error)]
                    )
                return
            except Exception:
                log.exception("saving previews failed; retrying in %.1fs", backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)

    def _done(self, item: Item) -> None:
        item.path.unlink(missing_ok=True)
        self._forget(item)

    def _forget(self, item: Item) -> None:
        with self._lock:
            self._paths.discard(item.path)
            self._in_flight -= 1
            self._spool_bytes -= item.size
        self.hooks.done(item.size)

    # -- heartbeat and recovery --------------------------------------------------------

    def _heartbeat_loop(self) -> None:
        interval = max(0.2, min(5.0, self.settings.study_quiet_seconds / 3))
        while not self._stop.wait(interval):
            with self._lock:
                active = list(self._active)
            by_tenant: dict[int, list[str]] = {}
            for tenant_id, study_uid in active:
                by_tenant.setdefault(tenant_id, []).append(study_uid)
            try:
                with transaction(self.sessions) as session:
                    for tenant_id, uids in by_tenant.items():
                        staging.touch_studies(
                            session=session, tenant_id=tenant_id, study_uids=uids, now=utcnow()
                        )
            except Exception:
                log.exception("heartbeat failed")
            self._sweep_stale_previews()

    def _sweep_stale_previews(self) -> None:
        """Re-render previews left pending by a crashed node (from the object store)."""
        # Only when this node is idle, so the sweep never races its own queue.
        with self._lock:
            if self._in_flight:
                return
        try:
            with self.sessions() as session:
                stale = staging.stale_pending_previews(
                    session=session, older_than=utcnow() - timedelta(seconds=60), limit=20
                )
            for instance_id in stale:  # render outside any transaction, record one by one
                with self.sessions() as session:
                    rendered = self._render_from_store(session, instance_id)
                state = PreviewState.failed if rendered.error else PreviewState.done
                with transaction(self.sessions) as session:
                    staging.mark_previews(
                        session=session, results=[(instance_id, state, rendered.error)]
                    )
        except Exception:
            log.exception("preview sweep failed")

    def _render_from_store(self, session: Session, instance_id: int) -> previews.Rendered:
        from zorgbericht.staging.models import Instance

        instance = session.get(Instance, instance_id)
        assert instance is not None
        tmp = self.spool / f"sweep-{uuid.uuid4().hex}.tmp"
        try:
            tmp.write_bytes(self.store.get_bytes(instance.object_key))
            rendered = self._render(str(tmp)).result()
            for kind, frame, jpeg in rendered.images:
                self.store.put_bytes(
                    staging.preview_key(instance.object_key, kind, frame), jpeg, "image/jpeg"
                )
            return rendered
        except KeyError:
            return previews.Rendered(error="object missing from the store")
        finally:
            tmp.unlink(missing_ok=True)

    def _recover_spool(self) -> None:
        """Stage again every complete spool file a previous run did not finish."""
        for folder in sorted(p for p in self.spool.iterdir() if p.is_dir() and p.name.isdigit()):
            batch = self.open_batch(tenant_id=int(folder.name), actor=audit.SYSTEM, kind="recovery")
            for part in folder.glob("*.part"):
                part.unlink(missing_ok=True)  # never acknowledged: the sender was not answered
            for path in sorted(folder.glob("*.dcm")):
                if not complete_spool_file(path):
                    log.warning(
                        "spool file %s was cut short before it was acknowledged; dropped", path.name
                    )
                    path.unlink(missing_ok=True)
                    continue
                try:
                    meta = read_meta_file(str(path))
                except UndecodableInstance:
                    log.error("spool file %s cannot be parsed; moved aside", path.name)
                    path.rename(path.with_suffix(".bad"))
                    continue
                size = path.stat().st_size
                self.enqueue(batch, meta, path, size)
                self.hooks.recovered(size)
            self.end_batch(batch, aborted=False)


_MARKER = InstanceMeta("", "", "", "", "")


def _record_refusals(session: Session, batch: Batch) -> None:
    """Write one refused-instances event per study, and one for those without a readable study."""
    for study_uid, refused in sorted(batch.refused.items()):
        audit.record(
            session=session,
            event=audit.Ev.instances_refused,
            actor=batch.actor,
            tenant_id=batch.tenant_id,
            outcome=audit.Outcome.serious_failure,
            patient_id=refused.patient_id,
            bsn=refused.bsn,
            study_uids=[study_uid] if study_uid else [],
            details={
                "refused": refused.statuses.total(),
                "statuses": dict(sorted(refused.statuses.items())),
                "sop_classes": dict(sorted(refused.sop_classes.items())),
                "batch": batch.id,
                "ended": batch.ended,
            },
        )


def _open_association_studies(chunk: list[Item]) -> dict[int, set[str]]:
    found: dict[int, set[str]] = {}
    for item in chunk:
        if item.meta is not _MARKER and item.batch is not None and item.batch.kind == "association":
            found.setdefault(item.tenant_id, set()).add(item.meta.study_uid)
    return found
