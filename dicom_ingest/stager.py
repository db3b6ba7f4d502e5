"""Run the staging pipeline in its own process, fed by the DICOM server through a queue.

The association threads only parse the header and write the spool file; uploading (boto3 is
heavy Python), indexing and preview bookkeeping happen in the stager process, so they never
hold the interpreter lock the C-STORE answers wait for. The spool stays the durable hand-off:
if the stager dies, a new one is started and stages what is left in it.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
from multiprocessing import get_context
from multiprocessing.sharedctypes import Synchronized
from typing import Any

from dicom_ingest.meta import StudyRef
from dicom_ingest.pipeline import (
    Batch,
    Hooks,
    Pipeline,
    StorageDown,
    count_refusal,
    spool_write,
)
from zorgbericht.audit import service as audit
from zorgbericht.settings import Settings
from zorgbericht.staging.schemas import InstanceMeta
from zorgbericht.storage import ObjectStore, StorageUnavailable

log = logging.getLogger(__name__)


class _SharedHooks(Hooks):
    def __init__(
        self,
        in_flight: Synchronized,
        spool_bytes: Synchronized,  # type: ignore[type-arg]
        storage_down: Synchronized,
    ) -> None:  # type: ignore[type-arg]
        self.in_flight, self.spool_bytes, self.storage_down = in_flight, spool_bytes, storage_down

    def recovered(self, size: int) -> None:
        with self.in_flight.get_lock():
            self.in_flight.value += 1
        with self.spool_bytes.get_lock():
            self.spool_bytes.value += size

    def done(self, size: int) -> None:
        with self.in_flight.get_lock():
            self.in_flight.value -= 1
        with self.spool_bytes.get_lock():
            self.spool_bytes.value -= size

    def storage(self, down: bool) -> None:
        self.storage_down.value = int(down)


def _stager_main(
    settings: Settings, commands: Any, hooks: _SharedHooks, parent: int, ready: Any
) -> None:
    from zorgbericht.runtime import build_runtime, configure_logging

    # The parent decides when to stop (it drains first); a Ctrl-C must not cut us short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Staging may lag; answering may not. The renderer processes inherit this priority.
    os.nice(10)
    configure_logging(settings.log_level)
    runtime = build_runtime(settings, run_migrations=False)
    pipeline = Pipeline(
        settings=settings, store=runtime.store, sessions=runtime.sessions, hooks=hooks
    )
    pipeline.start()  # queues what an earlier run left in the spool
    ready.set()
    batches: dict[str, Batch] = {}
    while True:
        try:
            command = commands.get(timeout=1.0)
        except queue.Empty:
            if os.getppid() != parent:  # the DICOM server is gone: finish and leave
                break
            continue
        if command[0] == "stop":
            break
        try:
            _apply(pipeline, batches, command)
        except Exception:  # never die on one command: its spool file stays for recovery
            log.exception("stager command %s failed", command[0])
    pipeline.close(timeout=600)
    runtime.close()


def _apply(pipeline: Pipeline, batches: dict[str, Batch], command: tuple[Any, ...]) -> None:
    kind, batch_id, *args = command
    if kind == "open":
        tenant_id, actor, batch_kind = args
        batch = pipeline.open_batch(tenant_id=tenant_id, actor=actor, kind=batch_kind)
        batches[batch_id] = batch
    elif kind == "item":
        meta, path, size, tenant_id, actor = args
        if batch_id not in batches:  # opened before a restart of this process
            batches[batch_id] = pipeline.open_batch(tenant_id=tenant_id, actor=actor)
        pipeline.enqueue(batches[batch_id], meta, path, size)
    elif kind == "end":
        aborted, tenant_id, actor, refused = args
        batch = batches.pop(batch_id, None)
        if batch is None and refused:  # opened before a restart: its refusals still count
            batch = pipeline.open_batch(tenant_id=tenant_id, actor=actor)
        if batch is not None:
            pipeline.end_batch(batch, aborted=aborted, refused=refused)


class StagerProcess:
    """The DICOM server's side of the pipeline: spool here, stage in the child process.

    A batch exists on both sides: the server's copy counts what was spooled and refused,
    the stager's copy is opened, fed and ended by commands (``_apply``) and writes the
    audit summary; the refusal counts travel with the "end" command.
    """

    def __init__(self, *, settings: Settings, store: ObjectStore) -> None:
        self.settings = settings
        self.store = store
        settings.spool_dir.mkdir(parents=True, exist_ok=True)
        self._context = get_context("spawn")
        self._hooks = _SharedHooks(
            self._context.Value("q", 0), self._context.Value("q", 0), self._context.Value("b", 0)
        )
        self._restart_lock = threading.Lock()
        self._storage_ok_until = 0.0
        self._closed = False
        self._make_process()

    def _make_process(self) -> None:
        self._commands = self._context.Queue()
        self._ready = self._context.Event()
        self._process = self._context.Process(
            target=_stager_main,
            name="zb-stager",
            daemon=False,
            args=(self.settings, self._commands, self._hooks, os.getpid(), self._ready),
        )

    def start(self, timeout: float = 120.0) -> None:
        """Start the stager; return once it has taken over the spool left by an earlier run."""
        self._process.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"the stager did not start within {timeout:.0f}s")

    def close(self, timeout: float = 600.0) -> None:
        """Let the stager finish everything accepted, then stop it."""
        self._closed = True
        self._commands.put(("stop", ""))
        self._process.join(timeout)
        if self._process.is_alive():
            log.error("stager did not finish in %.0fs; the spool keeps the rest", timeout)
            self._process.terminate()

    def drain(self, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._hooks.in_flight.value == 0:
                return True
            time.sleep(0.02)
        return False

    def open_batch(self, *, tenant_id: int, actor: audit.Actor, kind: str = "association") -> Batch:
        batch = Batch(tenant_id=tenant_id, actor=actor, kind=kind)
        self._commands.put(("open", batch.id, tenant_id, actor, kind))
        return batch

    def check_storage(self) -> None:
        """Raise ``StorageDown`` unless the object store answered recently (cached 2 s)."""
        if time.monotonic() < self._storage_ok_until:
            return
        try:
            self.store.check()
        except (StorageUnavailable, KeyError) as exc:
            raise StorageDown(str(exc)) from exc
        self._storage_ok_until = time.monotonic() + 2.0

    def accept(self, batch: Batch, meta: InstanceMeta, data: bytes) -> None:
        """Make one instance durable in the spool and hand it to the stager.

        Raises ``StorageDown`` (nothing kept) when the store is down, the spool is full or
        the association has already ended.
        """
        if not self._process.is_alive():
            self._restart()
        if self._hooks.storage_down.value:
            self._storage_ok_until = 0.0
            self.check_storage()
        if self._hooks.spool_bytes.value + len(data) > self.settings.spool_max_bytes:
            raise StorageDown("spool is full")
        # The connection-closed event runs on another thread than C-STORE: the batch lock
        # keeps "end" from overtaking an instance that is being spooled.
        with batch.lock:
            if batch.ended is not None:
                raise StorageDown("the association has ended")
            path = spool_write(
                self.settings.spool_dir, batch.tenant_id, data, self.settings.spool_fsync
            )
            self._hooks.recovered(len(data))  # in flight until the stager is done with it
            batch.pending += 1
            self._commands.put(
                ("item", batch.id, meta, path, len(data), batch.tenant_id, batch.actor)
            )

    def refuse(
        self, batch: Batch, *, status: int, ref: StudyRef, sop_class_uid: str | None
    ) -> None:
        """Count an instance answered with a failure status; audited when the batch ends."""
        count_refusal(batch, status=status, ref=ref, sop_class_uid=sop_class_uid)

    def end_batch(self, batch: Batch, *, aborted: bool) -> None:
        """End a batch once (released, aborted and connection-closed may all report it).

        A stager that died is started again first: a batch of refusals only has no spooled
        instance that would restart it, and its summary must not go to a dead queue.
        """
        if batch.ended is None and not self._closed and not self._process.is_alive():
            try:
                self._restart()
            except Exception:  # still end the batch here: the server's side must not hang
                log.exception("stager restart failed; the batch's summary is lost")
        with batch.lock:
            if batch.ended is not None:
                return
            batch.ended = "aborted" if aborted else "released"
            end = ("end", batch.id, aborted, batch.tenant_id, batch.actor, batch.refused)
            self._commands.put(end)

    def _restart(self) -> None:
        """The stager died: start a new one, which stages what the spool holds."""
        with self._restart_lock:
            if self._process.is_alive():
                return
            log.error("stager process exited with %s; restarting it", self._process.exitcode)
            self._make_process()
            self.start()
