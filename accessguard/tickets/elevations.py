"""Where break-glass elevations live, so a revocation reaches every guard at once.

An ``ElevationRecord`` is written once, when the elevation opens, and
revoked at most once. Guards look it up on every statement made under it
(``accessguard.engine.breakglass``), so what a store says is in force on the next
statement:

- ``MemoryElevationStore``: one process (every thread and connection of it);
- ``RedisElevationStore``: every process that shares the Redis database
  (the same server the throttle can use). ``get`` reads the record and its
  revocation with one ``MGET``; a Redis that cannot answer raises
  ``TicketStoreUnavailable``, and the statement is refused
  (``ticket.store_unavailable``): a revocation is never missed by guessing.
"""

from __future__ import annotations

import hmac
import json
import threading
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol, runtime_checkable

from accessguard.tickets.stores import TicketStoreUnavailable

#: how long Redis keeps a record after its elevation ends, for late look-ups (seconds)
RETENTION = 7 * 24 * 3600


@dataclass(frozen=True, slots=True, kw_only=True)
class ElevationRecord:
    """One elevation as the store holds it; times are POSIX seconds (UTC)."""

    id: str
    user: str
    kind: str
    customer_id: int | None
    product_id: int | None
    reason: str
    opened: float
    expires: float
    revoked: float | None = None
    revoked_by: str | None = None

    def status(self, now: float) -> str:
        """``open``, ``revoked`` (once revoked, whatever the clocks say) or ``expired``."""
        if self.revoked is not None:
            return "revoked"
        if now >= self.expires:
            return "expired"
        return "open"

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> ElevationRecord:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise TypeError("an elevation record is a JSON object")
        return cls(
            id=str(data["id"]),
            user=str(data["user"]),
            kind=str(data["kind"]),
            customer_id=_opt_int(data.get("customer_id")),
            product_id=_opt_int(data.get("product_id")),
            reason=str(data["reason"]),
            opened=float(data["opened"]),
            expires=float(data["expires"]),
            revoked=None if data.get("revoked") is None else float(data["revoked"]),
            revoked_by=None if data.get("revoked_by") is None else str(data["revoked_by"]),
        )


def _opt_int(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("subject ids are integers")
    return value


@runtime_checkable
class ElevationStore(Protocol):
    """``put`` once, ``get`` on every statement, ``revoke`` at most once (the first one holds)."""

    def put(self, record: ElevationRecord) -> None: ...

    def get(self, elevation_id: str) -> ElevationRecord | None: ...

    def revoke(self, elevation_id: str, *, at: float, by: str | None) -> ElevationRecord | None: ...


class MemoryElevationStore:
    """Elevations of one process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[str, ElevationRecord] = {}

    def put(self, record: ElevationRecord) -> None:
        with self._lock:
            if record.id in self._records:
                raise ValueError("an elevation id is written once")
            self._records[record.id] = record

    def get(self, elevation_id: str) -> ElevationRecord | None:
        return self._records.get(elevation_id)

    def revoke(self, elevation_id: str, *, at: float, by: str | None) -> ElevationRecord | None:
        with self._lock:
            record = self._records.get(elevation_id)
            if record is None or record.revoked is not None:
                return record
            record = replace(record, revoked=at, revoked_by=by)
            self._records[elevation_id] = record
            return record

    def close(self) -> None:
        """Nothing to release."""


class RedisElevationStore:
    """Elevations shared by every process using one Redis database.

    ``url`` is a ``redis://`` URL (or pass ``client``, a ``redis.Redis``).
    Keys: ``{prefix}{id}`` (the record, written with ``SET NX``) and
    ``{prefix}{id}:revoked`` (the revocation, ``SET NX``: the first holds).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Any = None,
        prefix: str = "accessguard:elevation:",
        timeout: float = 2.0,
        key: bytes | None = None,
    ) -> None:
        import redis

        #: with a key (the guard passes its audit key), every record is MAC'd: one written
        #: straight into Redis by someone without the key is no elevation (refused)
        self._mac_key = key
        if (url is None) == (client is None):
            raise ValueError("give a Redis url or a client, not both")
        self._owned = url is not None
        self._client = (
            redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
            if url is not None
            else client
        )
        self._errors: tuple[type[Exception], ...] = (redis.RedisError, OSError)
        self.prefix = prefix

    def _key(self, elevation_id: str) -> str:
        return f"{self.prefix}{elevation_id}"

    def _seal(self, text: str) -> str:
        if self._mac_key is None:
            return text
        mac = hmac.new(self._mac_key, b"accessguard elevation\n" + text.encode(), "sha256")
        return json.dumps({"record": text, "mac": mac.hexdigest()})

    def _open(self, raw: bytes | str, elevation_id: str) -> str:
        text = raw.decode() if isinstance(raw, bytes) else raw
        if self._mac_key is None:
            return text
        sealed = json.loads(text)
        inner = sealed.get("record") if isinstance(sealed, dict) else None
        mac = sealed.get("mac") if isinstance(sealed, dict) else None
        if not isinstance(inner, str) or not isinstance(mac, str):
            raise TicketStoreUnavailable(f"the elevation record of {elevation_id} is not sealed")
        want = hmac.new(self._mac_key, b"accessguard elevation\n" + inner.encode(), "sha256")
        if not hmac.compare_digest(mac, want.hexdigest()):
            raise TicketStoreUnavailable(
                f"the elevation record of {elevation_id} does not verify (forged?)"
            )
        return inner

    def put(self, record: ElevationRecord) -> None:
        ttl = max(1, int(record.expires - record.opened) + RETENTION)
        try:
            done = self._client.set(
                self._key(record.id), self._seal(record.to_json()), nx=True, ex=ttl
            )
        except self._errors as exc:
            raise TicketStoreUnavailable(
                f"the elevation store cannot be reached ({type(exc).__name__})"
            ) from None
        if not done:
            raise ValueError("an elevation id is written once")

    def get(self, elevation_id: str) -> ElevationRecord | None:
        key = self._key(elevation_id)
        try:
            raw, revoked = self._client.mget([key, f"{key}:revoked"])
            if raw is None:
                return None
            record = ElevationRecord.from_json(self._open(raw, elevation_id))
            if revoked is not None:
                mark = json.loads(revoked)
                record = replace(record, revoked=float(mark["at"]), revoked_by=mark.get("by"))
        except self._errors as exc:
            raise TicketStoreUnavailable(
                f"the elevation store cannot be reached ({type(exc).__name__})"
            ) from None
        except (ValueError, TypeError, KeyError):
            raise TicketStoreUnavailable(
                f"the elevation store holds a malformed record for {elevation_id}"
            ) from None
        return record if record.id == elevation_id else None

    def revoke(self, elevation_id: str, *, at: float, by: str | None) -> ElevationRecord | None:
        key = self._key(elevation_id)
        mark = json.dumps({"at": at, "by": by})
        try:
            if self._client.exists(key):
                self._client.set(f"{key}:revoked", mark, nx=True, ex=RETENTION)
        except self._errors as exc:
            raise TicketStoreUnavailable(
                f"the elevation store cannot be reached ({type(exc).__name__})"
            ) from None
        return self.get(elevation_id)

    def close(self) -> None:
        if self._owned:
            self._client.close()


def as_elevation_store(
    store: ElevationStore | str | None, *, key: bytes | None = None
) -> ElevationStore:
    """A store object, a ``redis://`` URL (its records MAC'd with ``key``), or None (this
    process only)."""
    if store is None:
        return MemoryElevationStore()
    if isinstance(store, str):
        if not store.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("an elevation store URL is a redis:// URL")
        return RedisElevationStore(store, key=key)
    return store
