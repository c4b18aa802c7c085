"""The Optuna storage a search writes to, made to survive what databases do in production.

- A PostgreSQL server that restarts (or a network blip) drops every connection: pooled connections are
  checked before use (`pool_pre_ping`) and a call that meets a dropped connection is retried with
  backoff for up to RECONNECT_SECONDS, so workers carry on when the server is back.
- An SQLite file held by another writer waits for the lock (SQLITE_LOCK_WAIT_S per attempt) instead
  of failing at once.
- A file that is not a database, or a server that never comes back, is a one-line UserError.

A retried write that had committed just before its connection dropped could be applied twice; Optuna's
writes are keyed by trial, so the one case that matters is a trial created twice, which the heartbeat
check then fails like any orphan.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import optuna
from optuna import storages

from optimizer.errors import UserError

log = logging.getLogger(__name__)
RECONNECT_SECONDS = 90.0  # a restart of a managed PostgreSQL takes seconds to a minute
OPEN_RETRY_SECONDS = 10.0  # at start a refused connection is more often a wrong URL than a restart
SQLITE_LOCK_WAIT_S = 30.0
F = TypeVar("F", bound=Callable[..., Any])


def _lost_connection(e: BaseException) -> bool:
    """An error a later attempt can clear: a dropped connection, a server not up yet, a lock."""
    from sqlalchemy import exc

    cause = e.__cause__ if isinstance(e, optuna.exceptions.StorageInternalError) else e
    if isinstance(cause, exc.DBAPIError) and cause.connection_invalidated:
        return True
    return isinstance(cause, (exc.OperationalError, exc.PendingRollbackError))


def _retrying(method: F, budget: Callable[[], float]) -> F:
    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        deadline = time.monotonic() + budget()
        pause = 0.25
        while True:
            try:
                return method(self, *args, **kwargs)
            except Exception as e:
                if not _lost_connection(e) or time.monotonic() + pause > deadline:
                    raise
                log.warning(
                    "storage: %s failed (%s); retrying in %.1f s", method.__name__, type(e.__cause__ or e).__name__, pause
                )
                time.sleep(pause)
                pause = min(2 * pause, 5.0)
                with contextlib.suppress(Exception):  # the thread's session may hold the failed transaction
                    self.remove_session()

    return call  # type: ignore[return-value]


class ReconnectingStorage(storages.RDBStorage):
    """RDBStorage whose database calls retry through lost connections (Optuna still caches it as an RDB)."""


# Every call that opens its own session: the public API, and the private ones Optuna's cache calls directly.
_PRIVATE_ENTRY_POINTS = ("_create_new_trial", "_get_best_trial_id", "_get_stale_trial_ids", "_get_trials", "_set_trial_param")
for _name in dir(storages.RDBStorage):
    _method = getattr(storages.RDBStorage, _name)
    public = not _name.startswith("_") and _name not in ("remove_session", "upgrade")
    if callable(_method) and (public or _name in _PRIVATE_ENTRY_POINTS):
        setattr(ReconnectingStorage, _name, _retrying(_method, lambda: RECONNECT_SECONDS))


def engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": SQLITE_LOCK_WAIT_S}}
    return {"pool_pre_ping": True}


def open_storage(url: str, heartbeat: int) -> storages.RDBStorage:
    """RDB storage with heartbeats: a worker that dies mid-trial has it marked failed and retried."""
    from sqlalchemy.exc import DatabaseError, IntegrityError, OperationalError, ProgrammingError

    where = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else url.split("@")[-1]
    deadline = time.monotonic() + OPEN_RETRY_SECONDS
    attempt = 0
    while True:
        attempt += 1
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return ReconnectingStorage(
                    url,
                    engine_kwargs=engine_kwargs(url),
                    heartbeat_interval=heartbeat,
                    grace_period=3 * heartbeat,
                    heartbeat_stale_trial_callback=storages.RetryHeartbeatStaleTrialCallback(max_retry=2),
                )
        except (IntegrityError, ProgrammingError):
            # Workers started together on an empty database race to create Optuna's schema (PostgreSQL:
            # "duplicate key" on its enum types); the loser retries and finds the schema there.
            if attempt == 5:
                raise
            time.sleep(0.5 + attempt)
        except OperationalError as e:  # locked, or a server that is not up (yet)
            first = str(e.orig).strip().splitlines()[0][:160] if e.orig else type(e).__name__
            if "already exists" in first and attempt < 5:  # the same race on SQLite: "table trials already exists"
                time.sleep(0.5 + attempt)
                continue
            if "locked" in first or time.monotonic() > deadline or url.startswith("sqlite"):
                raise UserError(
                    f"cannot open the study storage {where} ({first})",
                    "stop the process holding it, or give another --storage"
                    if "locked" in first
                    else "check that the database server is running and the URL is right",
                ) from None
            log.warning("storage: %s is unreachable (%s); retrying", where, first)
            time.sleep(min(2.0 * attempt, 5.0))
        except DatabaseError as e:  # not a database at all
            first = str(e.orig).strip().splitlines()[0][:160] if e.orig else type(e).__name__
            raise UserError(
                f"the study storage {where} is not a usable database ({first})",
                "move the file aside (its trials cannot be read) and run again, or give another --storage",
            ) from None
