"""Interception records: a queue in each worker feeding one native writer thread.

``record()`` only enqueues. A writer greenlet batches the queue (the first item plus whatever
arrives within ``batch_wait``, at most ``batch_size``) and hands each batch to the write thread of
the worker's store (bridge.store.Database): sqlite is C code that would otherwise run on the hub
and freeze every stream of the worker while it waits for the write lock or an fsync
(notes/stack.md §3).

No record is lost: when the store cannot be written (locked beyond busy_timeout, disk full,
read-only, file removed; for PostgreSQL: the server unreachable or refusing writes), batches are
appended to an fsync'd journal next to the database, ``<db>.records-<pid>.jsonl`` (for
PostgreSQL in ``journal_dir``, by default the working directory:
``aibridge-postgres-<database>-<hash>.records-<pid>.jsonl``), exclusively flock'd while its
process lives, and replayed in
order, before any newer batch, once the store is writable again. Journals left by dead processes
are replayed by the next recorder that starts. If the journal cannot be written either, batches
stay in memory and are retried. Writes are idempotent (rows keyed by uuid), so replaying a batch
twice changes nothing.

Interceptions left open by a process that is gone (killed, crashed) are ended by the others: each
interception row names its ``owner`` (a random id per process), each process that writes gives a
heartbeat in the store, and every recorder, at start and every ``heartbeat_interval``, first replays
the journals of dead processes (an end may be there), then ends every open interception whose
owner is not registered, is on this host and its pid is gone, or gave no heartbeat for
``_SILENT_HEARTBEATS`` intervals; ``ended_at`` is the time of that check, and the metadata says why.

Create the Recorder wherever you like, but use it (``record``) only in the worker, after fork:
the greenlet, threads and connections are created on first use.
"""

from __future__ import annotations

import fcntl
import glob
import os
import re
import secrets
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, TypeVar

import gevent
import gevent.event
import gevent.queue
from loguru import logger

from bridge.records import (
    InterceptionEndRecord, InterceptionRecord, PromptRecord, ThoughtRecord, TokenUsageRecord, ToolUsageRecord,
)
from bridge.retention import retention_cutoff
from bridge.store import (
    CHILD_TABLES, Database, OwnerState, RecordBatch, Store, file_id, journal_base, mask_url, refused,
)
from bridge.timestamps import format_timestamp, seconds_since, utc_now

_T = TypeVar("_T")
_STOP = object()
_RETRY_MIN, _RETRY_MAX = 0.5, 30.0
_PURGE_CHUNK = 5000
_PURGE_CHUNKS_PER_STEP = 20  # ~100k interceptions, then the writer takes the next batch
_JOURNAL_RE = re.compile(r"\.records-\d+\.jsonl$")
#: A process silent for this many heartbeat intervals is gone (the only sign for one on another host).
_SILENT_HEARTBEATS = 3
#: Interceptions written without an owner (before migration 0005) are ended once they started before
#: the oldest live process and that process has run this long: time for older processes to finish.
_OWNERLESS_GRACE = 600.0


@dataclass(slots=True)
class InterceptionStart:
    record: InterceptionRecord  # ended_at None


@dataclass(slots=True)
class InterceptionEnd:
    """The end of an interception with everything recorded for it."""

    interception_id: str
    ended_at: str
    metadata: dict[str, Any] | None = None  # merged into the interception's metadata
    token_usages: list[TokenUsageRecord] = field(default_factory=list)
    user_prompts: list[PromptRecord] = field(default_factory=list)
    tool_usages: list[ToolUsageRecord] = field(default_factory=list)
    model_thoughts: list[ThoughtRecord] = field(default_factory=list)


class _Unavailable(Exception):
    """The store cannot be written right now; the batch must be kept and retried."""


class Recorder:
    """One per worker process: ``record()`` from any greenlet, ``close()`` on worker exit."""

    def __init__(
        self,
        database_path: str,
        *,
        batch_size: int = 500,
        batch_wait: float = 0.5,
        retention: float = 0.0,
        purge_interval: float = 3600.0,
        journal_dir: str | None = None,
        busy_timeout: float = 10.0,
        heartbeat_interval: float = 10.0,
        database: Database | None = None,
    ) -> None:
        """``database``: the worker's store threads (bridge.gateway); by default the recorder's own,
        whose write connection waits ``busy_timeout`` for the write lock."""
        self.database_path = database_path
        self.batch_size = batch_size
        self.batch_wait = batch_wait
        self.retention = retention
        self.purge_interval = purge_interval
        self.busy_timeout = busy_timeout
        self.heartbeat_interval = heartbeat_interval
        self._store_name = mask_url(database_path)  # for logs: no password
        self._journal_base = journal_base(database_path, journal_dir)
        self._closed = False
        # Hub side, created on first use (in the worker, after fork).
        self._queue: gevent.queue.Queue | None = None
        self._writer: gevent.Greenlet | None = None
        self._progress: gevent.event.Event | None = None
        self._batch_full: gevent.event.Event | None = None
        self._recorded = 0  # items given to record()
        self._handled = 0  # items the writer has put in the DB or the journal (or memory)
        self._inflight: list[Any] = []
        self._owns_database = database is None
        self._database = database or Database(database_path, busy_timeout=busy_timeout)
        # Writer side: touched only by whoever holds _lock, the write connection's (a real OS lock:
        # held by the write thread, or by close()'s fallback in the caller's thread).
        self._lock = self._database.write_lock
        self._journal_fd: int | None = None
        self._journal_path: str | None = None
        self._journal_offset = 0  # bytes of our journal already replayed into the DB
        self._journal_batches = 0
        self._memory: list[RecordBatch] = []  # batches neither the DB nor the journal would take
        self._retry_at = 0.0
        self._retry_delay = _RETRY_MIN
        self._orphan_scan_at = 0.0  # due at start
        self._owner: tuple[int, str, str] | None = None  # (pid, owner id, started_at), made in the process using it
        self._heartbeat_at = 0.0  # next heartbeat due; the first before the first write
        self._registered = False  # this process has given a heartbeat (and may own rows in the store)
        self._purge_at: float | None = 0.0 if retention > 0 else None

    # -- public, hub side ----------------------------------------------------------------------

    def record(self, item: InterceptionStart | InterceptionEnd) -> None:
        """Queue an item for the writer. Never raises; never blocks (after close() it writes in place)."""
        try:
            if self._closed:
                # Shutdown already ran (a late stream): write it here rather than lose it.
                self._process_in_caller([item])
                return
            self._start()
            if self._writer is None:
                self._writer = gevent.spawn(self._run)
            self._recorded += 1
            self._queue.put_nowait(item)  # unbounded queue: never blocks
            if self._queue.qsize() >= self.batch_size - 1:  # with the first, held by the writer: a batch
                self._batch_full.set()
        except Exception:
            logger.opt(exception=True).error("could not queue an interception record")

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything recorded so far is in the DB or the journal; False on timeout."""
        target = self._recorded
        deadline = time.monotonic() + timeout
        while self._handled < target or self._memory:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._writer is None or self._writer.dead:
                return False
            self._progress.wait(remaining)
        return True

    def recover(self) -> int:
        """Replay journals left by dead processes now, then end the interceptions processes that are
        gone left open; returns the batches replayed.

        The writer does this by itself when it starts and every heartbeat_interval.
        """
        if self._closed:
            return 0
        self._start()
        return self._database.on_write_thread(self._recover_orphans)

    def close(self, timeout: float = 30.0) -> None:
        """Write (or journal) everything queued, then release the database and the journal.

        Call on worker exit (SIGTERM). Idempotent. If the writer cannot finish in time or the
        hub cannot switch (it is shutting down, or this is a hub callback), the rest is written
        synchronously here, which may take up to busy_timeout longer.
        """
        if self._closed:
            return
        self._closed = True
        writer = self._writer
        if writer is None:
            if self._queue is not None:  # only recover() ran: release its connection
                self._locked(self._close_resources)
            self._release_database()
            return
        deadline = time.monotonic() + timeout
        try:
            self._queue.put_nowait(_STOP)
            self._batch_full.set()
            writer.join(timeout)
        except Exception as exc:
            logger.warning("record writer could not be joined ({}); finishing synchronously", exc)
        if not (writer.dead and self._queue.empty()):
            with suppress(Exception):  # the hub may be gone: then the greenlet never runs again anyway
                writer.kill(block=False)
            self._process_in_caller([], deadline - time.monotonic())
        self._release_database()

    def _release_database(self) -> None:
        """Stop the recorder's own store threads (the worker's are the Gateway's to close)."""
        if self._owns_database:
            with suppress(Exception):
                self._database.close()

    @property
    def owner(self) -> str:
        """This process's id, the ``owner`` of the interceptions it records (a new one after fork)."""
        return self._identity()[1]

    def _identity(self) -> tuple[int, str, str]:
        """(pid, owner id, started_at) of this process."""
        identity = self._owner
        if identity is None or identity[0] != os.getpid():
            identity = self._owner = (os.getpid(), secrets.token_hex(8), utc_now())
            self._heartbeat_at, self._registered = 0.0, False
        return identity

    @property
    def pending(self) -> int:
        """Items recorded but not yet handled by the writer."""
        return self._recorded - self._handled

    @property
    def backlog(self) -> int:
        """Batches waiting for the store: in the journal or, if that failed too, in memory."""
        return self._journal_batches + len(self._memory)

    @property
    def journal_path(self) -> str | None:
        """This process's journal while it holds one (it exists only while there is a backlog)."""
        return self._journal_path if self._journal_fd is not None else None

    # -- writer greenlet -------------------------------------------------------------------------

    def _start(self) -> None:
        if self._queue is None:
            self._queue = gevent.queue.Queue()
            self._progress = gevent.event.Event()
            self._batch_full = gevent.event.Event()

    def _run(self) -> None:
        stop = False
        while not stop:
            # Collected in place, so close()'s fallback can rewrite them if this greenlet is stuck.
            items: list[Any] = []
            self._inflight = items
            try:
                first = self._queue.get(timeout=self._next_wakeup())
            except gevent.queue.Empty:
                first = None
            if first is _STOP:
                stop = True
            elif first is not None:
                items.append(first)
                # The rest of the batch is taken in one go once batch_wait passed or a batch is queued
                # (record() and close() say so): a wake-up per record cost more than its queueing.
                self._batch_full.clear()
                if self._queue.qsize() < self.batch_size - 1:
                    self._batch_full.wait(self.batch_wait)
                while len(items) < self.batch_size:
                    try:
                        item = self._queue.get_nowait()
                    except gevent.queue.Empty:
                        break
                    if item is _STOP:
                        stop = True
                        break
                    items.append(item)
            try:
                self._database.on_write_thread(self._process, items, stop)
            except Exception:
                logger.opt(exception=True).error("record writer failed on a batch of {} item(s)", len(items))
            self._inflight = []
            self._handled += len(items)
            self._progress, progress = gevent.event.Event(), self._progress
            progress.set()

    def _next_wakeup(self) -> float:
        """Seconds until a retry, a purge, a heartbeat or an orphan scan is due."""
        if self.backlog:
            due = [self._retry_at]  # orphan scans, heartbeats and purges wait until the store is writable
        else:
            due = [self._orphan_scan_at] + ([self._purge_at] if self._purge_at is not None else [])
            if self._registered:
                due.append(self._heartbeat_at)
        return max(0.0, min(due) - time.monotonic())

    def _process_in_caller(self, items: list[Any], timeout: float = 30.0) -> None:
        """The writer's work done in the calling thread (shutdown paths only)."""
        # At least busy_timeout: the write thread may be finishing a write that waits for the lock.
        if not self._lock.acquire(timeout=max(timeout, self.busy_timeout + 1.0)):
            logger.error("record writer is stuck: {} queued record(s) were not written", self.pending)
            return
        try:
            queued = self._inflight + items  # in-flight ones may be rewritten: writes are idempotent
            while self._queue is not None and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is not _STOP:
                    queued.append(item)
            self._process(queued, True)
        finally:
            self._lock.release()

    # -- writer thread -----------------------------------------------------------------------------

    def _locked(self, fn: Callable[..., _T], *args: Any) -> _T:
        with self._lock:
            return fn(*args)

    def _process(self, items: list[Any], final: bool) -> None:
        now = time.monotonic()
        batch = _to_batch(items)
        if not self.backlog and self._registered and now >= self._heartbeat_at:
            self._beat()
        if not self.backlog and now >= self._orphan_scan_at:
            self._recover_orphans()
        if self.backlog and (final or now >= self._retry_at):
            self._drain_backlog()
        if len(batch):
            if self.backlog:
                self._journal(batch)  # keep order: older journaled batches go to the DB first
            else:
                try:
                    self._write(batch)
                except _Unavailable as exc:
                    self._schedule_retry(exc)
                    self._journal(batch)
        elif self._memory:
            self._journal(None)  # the journal may work again: get the batches out of memory
        if final:
            self._close_resources()
        elif not self.backlog:
            self._purge_step(now)

    def _open_store(self) -> Store:
        """The write connection, reopened (and migrated) if the file was removed or replaced."""
        return self._database.writer.get()

    def _drop_store(self) -> None:
        self._database.writer.drop()

    def _write(self, batch: RecordBatch) -> None:
        """Write a batch to the store, or raise _Unavailable. Rows the store refuses are set aside."""
        try:
            store = self._open_store()
            if time.monotonic() >= self._heartbeat_at:
                self._heartbeat(store)  # registered before any row it owns is in the store
        except Exception as exc:
            self._drop_store()
            raise _Unavailable(str(exc)) from exc
        try:
            store.records.write_records(batch)
        except Exception as exc:
            if not refused(exc):
                self._drop_store()  # a fresh connection on the next attempt
                raise _Unavailable(str(exc)) from exc
            parts = batch.split()
            if len(parts) == 1:
                self._set_aside(batch.to_json(), exc)
                return
            for part in parts:  # isolate the refused interception, write the others
                self._write(part)

    def _set_aside(self, line: str, reason: BaseException) -> None:
        """Keep records the store refuses (retrying cannot help) in a file, and say so."""
        path = f"{self._journal_base}.records-rejected.jsonl"
        logger.error("the store refused records ({}); they are kept in {}", reason, path)
        try:
            _append(path, line.encode() + b"\n")
        except OSError as exc:
            logger.error("could not write {} ({}); the refused records are lost", path, exc)

    def _schedule_retry(self, exc: BaseException) -> None:
        if self._retry_delay == _RETRY_MIN:
            logger.warning("cannot write records to {} ({}); journaling them until it is writable",
                           self._store_name, mask_url(str(exc)))
        self._retry_at = time.monotonic() + self._retry_delay
        self._retry_delay = min(self._retry_delay * 2, _RETRY_MAX)

    # journal

    def _journal(self, batch: RecordBatch | None) -> None:
        """Append the memory backlog and ``batch`` to our journal, fsync'd; else keep them in memory."""
        pending = self._memory + ([batch] if batch is not None else [])
        data = "".join(b.to_json() + "\n" for b in pending).encode()
        try:
            fd = self._journal_open()
            size = os.fstat(fd).st_size
            try:
                _write_all(fd, data)
                os.fsync(fd)
            except OSError:
                os.ftruncate(fd, size)  # no torn line: the next append must start a fresh line
                raise
        except OSError as exc:
            if not self._memory:
                logger.error("cannot write the records journal {} ({}); keeping records in memory",
                             self._journal_path, exc)
            if batch is not None:
                self._memory.append(batch)
            return
        self._journal_batches += len(pending)
        self._memory.clear()

    def _journal_open(self) -> int:
        if self._journal_fd is not None:
            return self._journal_fd
        path = self._journal_path = f"{self._journal_base}.records-{os.getpid()}.jsonl"
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            # Blocking: only a recovering process can hold it (a dead process with our pid left it).
            fcntl.flock(fd, fcntl.LOCK_EX)
            if _same_file(fd, path):
                break
            os.close(fd)  # that process replayed and removed it meanwhile: create a new one
        _fsync_dir(path)
        self._journal_fd, self._journal_offset = fd, 0
        self._journal_batches = sum(1 for _ in _lines(fd, 0))  # an adopted file may already hold batches
        return fd

    def _drain_backlog(self) -> None:
        """Replay our journal, then the memory backlog, into the store (retried with backoff)."""
        try:
            if self._journal_fd is not None:
                for line in _lines(self._journal_fd, self._journal_offset):  # by fd: works even if unlinked
                    self._write_line(line)
                    self._journal_offset += len(line)
                    self._journal_batches -= 1
                with suppress(FileNotFoundError):
                    os.unlink(self._journal_path)  # still under our lock: nobody takes it for an orphan
                os.close(self._journal_fd)
                self._journal_fd, self._journal_batches = None, 0
            while self._memory:
                self._write(self._memory[0])
                self._memory.pop(0)
        except (_Unavailable, OSError) as exc:
            self._schedule_retry(exc)
            return
        logger.info("records store {} is writable again; the journaled records are written", self._store_name)
        self._retry_delay, self._retry_at = _RETRY_MIN, 0.0

    def _write_line(self, line: bytes) -> None:
        try:
            batch = RecordBatch.from_json(line.decode())
        except (ValueError, TypeError) as exc:  # a torn line from a crash mid-write
            self._set_aside(line.decode(errors="replace").rstrip("\n"), exc)
            return
        self._write(batch)

    def _recover_orphans(self) -> int:
        """Replay journals of processes that died with a backlog, then end the interceptions that
        processes which are gone left open; returns the batches replayed."""
        replayed = 0
        try:
            for path in sorted(glob.glob(glob.escape(self._journal_base) + ".records-*.jsonl")):
                if _JOURNAL_RE.search(path) and path != self._journal_path:
                    replayed += self._replay_orphan(path)
            self._end_orphans()
        except (_Unavailable, OSError) as exc:
            logger.warning("cannot replay record journals or end interceptions of stopped processes yet ({})", exc)
            self._orphan_scan_at = time.monotonic() + _RETRY_MAX
        else:
            self._orphan_scan_at = time.monotonic() + self.heartbeat_interval
        if replayed:
            logger.info("replayed {} record batch(es) journaled by stopped processes", replayed)
        return replayed

    # processes: heartbeats, and the interceptions of those that are gone

    def _heartbeat(self, store: Store) -> None:
        pid, owner, started_at = self._identity()
        store.processes.heartbeat(owner, _HOST, pid, started_at)
        self._registered = True
        self._heartbeat_at = time.monotonic() + self.heartbeat_interval

    def _beat(self) -> None:
        try:
            self._heartbeat(self._open_store())
        except Exception as exc:
            logger.warning("cannot write this process's heartbeat to {} ({}); retrying", self._store_name,
                           mask_url(str(exc)))
            self._drop_store()
            self._heartbeat_at = time.monotonic() + self.heartbeat_interval

    def _end_orphans(self) -> int:
        """End the open interceptions of processes that are gone; returns how many. Runs after the
        journals of dead processes were replayed: their ends may be there."""
        try:
            store = self._open_store()
            ended = 0
            owners = store.processes.open_interception_owners()
            for state in owners:
                why = self._why_gone(state) if state.owner is not None else None
                if why is not None:
                    ended += store.processes.end_open_interceptions(state.owner, utc_now(), _orphan_metadata(state, why))
            if any(state.owner is None for state in owners):
                ended += self._end_ownerless(store)
            store.processes.forget_silent_processes(self._silence_limit)
        except _Unavailable:
            raise
        except Exception as exc:
            self._drop_store()
            raise _Unavailable(str(exc)) from exc
        if ended:
            logger.warning("ended {} interception(s) left open by gateway processes that stopped", ended)
        return ended

    @property
    def _silence_limit(self) -> float:
        return _SILENT_HEARTBEATS * self.heartbeat_interval

    def _why_gone(self, state: OwnerState) -> str | None:
        """Why the owner of open interceptions is gone, or None while it may be alive."""
        if state.owner == self.owner:
            return None
        same_host = state.host == _HOST
        if same_host and os.path.exists(f"{self._journal_base}.records-{state.pid}.jsonl"):
            return None  # its journal is not replayed yet (its process lives, or another replays it)
        if state.host is None:
            return "it is no longer registered"
        if same_host and not _pid_alive(state.pid):
            return "its process has exited"
        if state.silent_for is not None and state.silent_for > self._silence_limit:
            return f"it gave no heartbeat for {state.silent_for:.0f} s"
        return None

    def _end_ownerless(self, store: Store) -> int:
        """Rows written before owners were recorded: ended once they started before the oldest live
        process and that process has run for _OWNERLESS_GRACE (older ones had time to finish)."""
        oldest = store.processes.oldest_live_process_start(self._silence_limit)
        if oldest is None or seconds_since(oldest) < _OWNERLESS_GRACE:
            return 0
        metadata = _orphan_metadata(OwnerState(None), "it was started before the oldest running one")
        return store.processes.end_open_interceptions(None, utc_now(), metadata, started_before=oldest)

    def _replay_orphan(self, path: str) -> int:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return 0
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0  # its process is alive, or another process is replaying it
            if not _same_file(fd, path):
                return 0  # replayed and removed by another process after we opened it
            count = 0
            for line in _lines(fd, 0):
                self._write_line(line)
                count += 1
            os.unlink(path)  # before releasing the lock, so it is replayed exactly once
            return count
        finally:
            os.close(fd)

    # retention and shutdown

    def _purge_step(self, now: float) -> None:
        if self._purge_at is None or now < self._purge_at:
            return
        try:
            deleted = self._open_store().retention.purge_records(
                retention_cutoff(self.retention), _PURGE_CHUNK, max_chunks=_PURGE_CHUNKS_PER_STEP
            )
        except Exception as exc:
            logger.warning("retention purge failed ({}); retrying later", exc)
            self._drop_store()
            self._purge_at = now + min(self.purge_interval, _RETRY_MAX)
            return
        if deleted:
            logger.info("retention purge deleted {} interception(s)", deleted)
        more = deleted == _PURGE_CHUNK * _PURGE_CHUNKS_PER_STEP
        self._purge_at = now if more else now + self.purge_interval  # more: go on after the next batch

    def _close_resources(self) -> None:
        store = self._database.writer.current
        if self._registered and not self.backlog and store is not None:
            with suppress(Exception):  # else its heartbeat ages out
                store.processes.forget_process(self.owner)
            self._registered = False
        if self._memory:
            logger.error("{} record batch(es) could not be written or journaled and are lost", len(self._memory))
            self._memory.clear()
        if self._journal_fd is not None:
            logger.warning("{} record batch(es) remain in {}; the next start replays them",
                           self._journal_batches, self._journal_path)
            os.close(self._journal_fd)  # releases the lock: the file is now an orphan to replay
            self._journal_fd, self._journal_batches = None, 0
        self._drop_store()


def _to_batch(items: list[InterceptionStart | InterceptionEnd]) -> RecordBatch:
    batch = RecordBatch()
    for item in items:
        if isinstance(item, InterceptionStart):
            batch.interceptions.append(item.record)
            continue
        batch.ends.append(InterceptionEndRecord(id=item.interception_id, ended_at=item.ended_at, metadata=item.metadata))
        for name in CHILD_TABLES:
            getattr(batch, name).extend(getattr(item, name))
    return batch


def _host_id() -> str:
    """Where pids can be compared: the host name, its boot and the pid namespace (a container's own);
    without /proc a random suffix, so that no other process ever counts as on this host."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as boot:
            scope = f"{boot.read().strip()}/{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        scope = str(uuid.uuid4())
    return f"{socket.gethostname()}/{scope}"


_HOST = _host_id()


def _pid_alive(pid: int | None) -> bool:
    """Whether a process of this host has that pid (a zombie, dead but not yet reaped, has not)."""
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rpartition(b")")[2].split()[0] != b"Z"
    except FileNotFoundError:
        return False
    except (OSError, IndexError):
        return True


def _orphan_metadata(state: OwnerState, why: str) -> dict[str, Any]:
    where = f" (pid {state.pid} on {state.host.split('/', 1)[0]})" if state.host else ""
    metadata = {"error": f"the gateway process serving it stopped before it ended{where}: {why}"}
    if state.last_seen is not None:
        metadata["process_last_seen"] = format_timestamp(datetime.fromtimestamp(state.last_seen, timezone.utc))
    return metadata


def _same_file(fd: int, path: str) -> bool:
    st = os.fstat(fd)
    return file_id(path) == (st.st_dev, st.st_ino)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _append(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: str) -> None:
    """Make a new file's directory entry durable too (best effort)."""
    try:
        fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _lines(fd: int, offset: int) -> Iterator[bytes]:
    """The lines of an open journal from ``offset`` (a duplicate fd: the caller's stays open)."""
    with os.fdopen(os.dup(fd), "rb") as journal:
        journal.seek(offset)
        yield from journal
