"""Connections: opened per operation, waiting on another process's lock, creating and migrating the store."""

from __future__ import annotations

import atexit
import logging
import random
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import duckdb

from runner.store.base import (
    DEFAULT_DB,
    LOCK_TIMEOUT_ENV,
    MIGRATIONS,
    StoreError,
    StoreLocked,
    StoreMissing,
    _check_version,
    _migrate,
    lock_timeout,
)
from runner.store.recovery import _import_recoveries

T = TypeVar("T")

log = logging.getLogger(__name__)


@contextmanager
def connect(
    db: str | Path, read_only: bool = False, attempts: int | None = None, *, timeout: float | None = None
) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open the store at the current schema, waiting while another process holds its lock.

    A writer creates a missing (or half-created, empty) store, migrates an older one in place and imports the
    recovery files of runs whose end could not be written before. A reader writes nothing: an older store is
    read through an upgraded temporary copy, and a missing or empty one is an error.

    Args:
        db: Path of the DuckDB file.
        read_only: Open without write access (the file must exist).
        attempts: Tries before giving up on a lock held elsewhere (default: as many as the timeout allows).
        timeout: Seconds to wait for such a lock (default: :func:`lock_timeout`).

    Raises:
        StoreMissing: Reading a store that does not exist.
        StoreLocked: The lock stayed held for the whole timeout.
        StoreError: The path is not a store (a directory, another file), its schema is newer than this embx
            knows, or it cannot be opened.

    """
    path = Path(db)
    wait = lock_timeout() if timeout is None else timeout
    if path.is_dir():
        raise StoreError(f"{path} is a directory, not a results store file (pass --db {path / DEFAULT_DB})")
    if read_only:
        con = _open_for_reading(path, attempts, wait)
    else:
        _ensure_created(path, attempts, wait)
        con = _open(path, False, attempts, wait)
        try:
            _check_version(con, path)
            _migrate(con)
            _import_recoveries(con, path)
        except BaseException as exc:
            con.close()
            if isinstance(exc, duckdb.IOException):
                raise StoreError(f"cannot write the results store {path}: {exc}") from exc
            raise
    try:
        yield con
    except duckdb.IOException as exc:  # a file that went away or became unwritable under us, a full disk
        raise StoreError(f"cannot use the results store {path}: {exc}") from exc
    finally:
        con.close()


def _retry_locked(action: Callable[[], T], path: Path, attempts: int | None, wait: float) -> T:
    """Run `action` (an open), retrying with back-off while another process holds the file's lock."""
    started = time.monotonic()
    tries = 0
    while True:
        try:
            return action()
        except duckdb.IOException as exc:
            if not re.search(r"\block\b", str(exc), re.IGNORECASE):  # "Could not set lock", not "block"
                raise StoreError(f"cannot open the results store {path}: {exc}") from exc
            tries += 1
            left = started + wait - time.monotonic()
            if left <= 0 or (attempts is not None and tries >= attempts):
                waited = time.monotonic() - started
                raise StoreLocked(
                    f"the results store {path} is locked by another process (waited {waited:.0f} s;"
                    f" ${LOCK_TIMEOUT_ENV} sets how long): {exc}"
                ) from exc
            time.sleep(min(left, min(2.0, 0.05 * 2 ** min(tries, 6)) * (0.5 + random.random())))
        except duckdb.Error as exc:
            raise StoreError(f"cannot open the results store {path}: {exc}") from exc


def _open(path: Path, read_only: bool, attempts: int | None, wait: float) -> duckdb.DuckDBPyConnection:
    return _retry_locked(lambda: duckdb.connect(str(path), read_only=read_only), path, attempts, wait)


def _ensure_created(path: Path, attempts: int | None, wait: float) -> None:
    """Create (and migrate) a missing store under an exclusive lock on a sidecar file.

    DuckDB leaves a new file empty and unlocked for a moment while creating it; a second process opening it
    then fails ("not a valid DuckDB database file"). All creators go through `<db>.lock`, and an empty file
    found there is a creation that died half-way: it is replaced. Writers only: readers wait in
    :func:`_open_for_reading`.
    """
    if path.exists() and path.stat().st_size > 0:
        return
    try:
        import fcntl
    except ImportError:  # not POSIX: no sidecar lock
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(f"{path}.lock", "a")  # noqa: SIM115 - held across the block below
    except OSError as exc:
        raise StoreError(f"cannot create the results store {path}: {exc}") from exc
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if path.exists() and path.stat().st_size > 0:
                return
            path.unlink(missing_ok=True)
            con = _open(path, False, attempts, wait)
            try:
                _migrate(con)
            except duckdb.IOException as exc:
                raise StoreError(f"cannot create the results store {path}: {exc}") from exc
            finally:
                con.close()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _open_for_reading(path: Path, attempts: int | None, wait: float) -> duckdb.DuckDBPyConnection:
    """A read-only connection at the current schema; nothing is written, not even a lock file."""
    if not path.exists():
        raise StoreMissing(f"no results store at {path} (run `embx run SPEC` first, or pass --db)")
    if path.stat().st_size == 0:
        _wait_for_creation(path)
        if path.stat().st_size == 0:
            raise StoreError(
                f"{path} is empty (0 bytes): a store whose creation did not finish; the next `embx run` or"
                " `embx search` recreates it (or remove the file)"
            )
    con = _open(path, True, attempts, wait)
    try:
        version = _check_version(con, path)
    except BaseException:
        con.close()
        raise
    if version == len(MIGRATIONS):
        return con
    con.close()
    return _upgraded_copy(path, version, attempts, wait)


def _wait_for_creation(path: Path) -> None:
    """Wait for a creator holding `<db>.lock` (opened for reading: a reader never creates it)."""
    try:
        import fcntl

        lock = open(f"{path}.lock")  # noqa: SIM115 - closed below
    except (ImportError, OSError):
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_SH)
        fcntl.flock(lock, fcntl.LOCK_UN)


_COPIES: dict[str, tuple[tuple[int, ...], Path]] = {}
"""Upgraded copies of older stores made by this process: resolved path -> (file stamp, copy)."""


def _upgraded_copy(path: Path, version: int, attempts: int | None, wait: float) -> duckdb.DuckDBPyConnection:
    """Read an older store through a temporary copy migrated to the current schema (made once per process)."""
    stamp = tuple(
        value for p in (path, Path(f"{path}.wal")) if p.exists() for value in (p.stat().st_mtime_ns, p.stat().st_size)
    )
    key = str(path.resolve())
    if key in _COPIES and _COPIES[key][0] == stamp and _COPIES[key][1].exists():
        return duckdb.connect(str(_COPIES[key][1]), read_only=True)
    folder = Path(tempfile.mkdtemp(prefix="embx-store-"))
    atexit.register(shutil.rmtree, folder, True)
    copy = folder / "upgraded.duckdb"
    con = duckdb.connect(str(copy))
    try:
        quoted = str(path).replace("'", "''")
        _retry_locked(lambda: con.execute(f"ATTACH '{quoted}' AS old (READ_ONLY)"), path, attempts, wait)
        con.execute("COPY FROM DATABASE old TO upgraded")
        con.execute("DETACH old")
        _migrate(con)
    finally:
        con.close()
    _COPIES[key] = (stamp, copy)
    log.warning(
        "%s has schema version %d (this embx: %d); read through an upgraded temporary copy. The next `embx run`"
        " or `embx search` upgrades it in place.",
        path,
        version,
        len(MIGRATIONS),
    )
    return duckdb.connect(str(copy), read_only=True)
