"""The audit chain: keyed links, checkpoints and their verification.

Each event carries its position (``accessguard.chain.seq``, 1-based), the
link to the event before it (``accessguard.chain.prev``) and its own MAC
(``event.hash``): HMAC-SHA256, under the key in ``ACCESSGUARD_AUDIT_KEY``
(hex), over the previous hash and the event's canonical JSON. A keyed event
also names its key (``accessguard.chain.key``: the first 16 hex digits of
HMAC(key, "accessguard key-id")); the key itself is never written anywhere.
Without a key the link is plain SHA-256: tamper-evident only against naive
edits, since anyone can recompute it.

A checkpoint (the last position and hash, MAC'd with the same key) is kept
beside the trail: ``FILE.checkpoint`` for a JSON-lines file, the
``accessguard.checkpoints`` table for PostgreSQL. A trail whose tail was cut
or emptied no longer reaches its checkpoint; a trail or checkpoint that was
deleted is reported, never passed.

Threat model: someone who can write the trail (and its checkpoint, and the
spool) but does not hold the key can delete, cut, reorder, edit, forge or
replace events, and delete or forge the checkpoint; each of these fails
``verify``. They cannot make a changed trail verify. They can destroy the
trail, which ``verify`` reports until a guard starts a new one in its place;
they can roll a trail and its checkpoint back together to a copy they kept
earlier; they can stop the guard (every refusal then fails closed). Keep a
copy of the checkpoints off the host to catch the last two. Without a key,
anyone can recompute the chain: it holds only against naive edits.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accessguard.errors import ConfigurationError, Reason

GENESIS = "0" * 64
HASH = "event.hash"
PREV = "accessguard.chain.prev"
SEQ = "accessguard.chain.seq"
KEY_ID = "accessguard.chain.key"
KEY_ENV = "ACCESSGUARD_AUDIT_KEY"
CHECKPOINT_SUFFIX = ".checkpoint"
_MIN_KEY_BYTES = 16
#: the key ``accessguard demo`` signs with. It is public, so a trail keyed with it
#: is verified like an unkeyed one: tamper-evident only against naive edits.
DEMO_KEY = hashlib.sha256(b"accessguard public demo key").digest()
_NUL = "\x00"

Event = dict[str, Any]


class FromEnv:
    """The default of every ``key=`` argument: read ``ACCESSGUARD_AUDIT_KEY``."""

    def __repr__(self) -> str:
        return "FROM_ENV"


FROM_ENV: Any = FromEnv()


def load_key(value: str | bytes | FromEnv | None = FROM_ENV) -> bytes | None:
    """The audit key: bytes as given, hex text, or the environment (None when unset)."""
    if isinstance(value, FromEnv):
        value = os.environ.get(KEY_ENV) or None
    if value is None or isinstance(value, bytes):
        key = value
    else:
        try:
            key = bytes.fromhex(value.strip())
        except ValueError:
            raise ConfigurationError(
                f"{KEY_ENV} must be hex digits (e.g. from `openssl rand -hex 32`)",
                reason=Reason.AUDIT_KEY_INVALID,
            ) from None
    if key is not None and len(key) < _MIN_KEY_BYTES:
        raise ConfigurationError(
            f"the audit key must be at least {_MIN_KEY_BYTES} bytes ({2 * _MIN_KEY_BYTES} hex "
            "digits)",
            reason=Reason.AUDIT_KEY_INVALID,
        )
    return key


def key_id(key: bytes | None) -> str | None:
    """The public name of a key, written in each event (None for no key)."""
    if key is None:
        return None
    return _key_id(key)


@functools.lru_cache(maxsize=8)
def _key_id(key: bytes) -> str:
    # one HMAC per key, not per event: every write names the key three or four times
    return hmac.new(key, b"accessguard key-id", hashlib.sha256).hexdigest()[:16]


def canonical(event: Mapping[str, Any]) -> str:
    body = {k: v for k, v in event.items() if k != HASH}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        raise ValueError("a key appears twice in one object")
    return found


def parse_line(raw: bytes | str) -> Any:
    """One trail line as JSON, refusing an object that names a key twice (ValueError).

    Python keeps a repeated key's last value and DuckDB (the trail's index) its first: a
    line with a second ``user.name`` put before the real one verified (the chain hashes
    the parsed event) while the index read the other."""
    return json.loads(raw, object_pairs_hook=_unique)


def chain_hash(prev: str, event: Mapping[str, Any], key: bytes | None = None) -> str:
    data = (prev + "\n" + canonical(event)).encode()
    if key is None:
        return hashlib.sha256(data).hexdigest()
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def clean(value: Any) -> Any:
    """``value`` with NUL and lone surrogates in its strings escaped as visible text.

    PostgreSQL's text and jsonb reject both, UTF-8 files reject surrogates:
    escaped before sealing, the event is the same in every sink and verifies.
    """
    if isinstance(value, str):
        if _NUL in value:
            value = value.replace(_NUL, "\\u0000")
        if not value.isascii():
            try:
                value.encode()
            except UnicodeEncodeError:
                value = value.encode("utf-8", "backslashreplace").decode()
        return value
    if isinstance(value, dict):
        return {clean(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value


@dataclass(frozen=True, slots=True)
class Head:
    """The end of a chain: its last position, hash and key id."""

    seq: int = 0
    hash: str = GENESIS
    key: str | None = None


def link(events: Iterable[Event], head: Head, key: bytes | None) -> Head:
    """Clean and chain ``events`` onto ``head`` in place; return the new head."""
    kid = key_id(key)
    seq, prev = head.seq, head.hash
    for event in events:
        seq += 1
        event.pop(KEY_ID, None)
        event[SEQ] = seq
        if kid is not None:
            event[KEY_ID] = kid
        event[PREV] = prev
        text = canonical(event)
        if _unclean(text):  # rare: a NUL or a lone surrogate somewhere in the event
            _clean_event(event)
            text = canonical(event)
        data = (prev + "\n" + text).encode()
        prev = event[HASH] = (
            hashlib.sha256(data).hexdigest()
            if key is None
            else hmac.new(key, data, hashlib.sha256).hexdigest()
        )
    return Head(seq, prev, kid)


def _unclean(text: str) -> bool:
    """Whether an event's canonical text may hold what ``clean`` escapes (NUL: JSON writes
    it ``\\u0000``; a lone surrogate: the text does not encode)."""
    if "\\u0000" in text:
        return True
    if text.isascii():
        return False
    try:
        text.encode()
    except UnicodeEncodeError:
        return True
    return False


def _clean_event(event: Event) -> None:
    for name, value in list(event.items()):
        fixed = clean(value)
        if fixed is not value:
            event[name] = fixed
    for name in [k for k in event if not k.isascii() or _NUL in k]:
        event[clean(name)] = event.pop(name)


def seal(events: Iterable[Event], prev: str) -> str:
    """Link ``events`` onto ``prev`` without a key or positions (the old format); last hash."""
    for event in events:
        event[PREV] = prev
        prev = event[HASH] = chain_hash(prev, event)
    return prev


def head_of(event: Mapping[str, Any], position: int) -> Head:
    """The head a chain has after ``event`` (at ``position`` if it has no seq of its own)."""
    seq = event.get(SEQ)
    return Head(
        seq if isinstance(seq, int) else position,
        str(event.get(HASH, "")),
        event.get(KEY_ID) if isinstance(event.get(KEY_ID), str) else None,
    )


# ---------------------------------------------------------------------- checkpoints


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """What the guard vouches for beside the trail: its last position and hash.

    For a file, ``end`` is the byte offset just after that event: a writer
    finds it again in O(1).
    """

    seq: int
    hash: str
    key: str | None
    mac: str = field(default="", compare=False)
    end: int | None = None

    def body(self) -> str:
        fields = {"seq": self.seq, "hash": self.hash, "key": self.key}
        if self.end is not None:
            fields["end"] = self.end
        return json.dumps(fields, sort_keys=True)

    @classmethod
    def of(cls, head: Head, key: bytes | None, *, end: int | None = None) -> Checkpoint:
        cp = cls(head.seq, head.hash, key_id(key), end=end)
        return cls(cp.seq, cp.hash, cp.key, _mac(cp.body(), key), end)

    def valid(self, key: bytes | None) -> bool:
        return self.key == key_id(key) and hmac.compare_digest(self.mac, _mac(self.body(), key))

    def as_json(self) -> str:
        return json.dumps({"accessguard.checkpoint": 1, **json.loads(self.body()), "mac": self.mac})

    @classmethod
    def parse(cls, text: str) -> Checkpoint | None:
        """A checkpoint from its JSON (None if it is not one)."""
        try:
            raw = json.loads(text)
            seq, hash_, key, mac = raw["seq"], raw["hash"], raw["key"], raw["mac"]
        except (ValueError, KeyError, TypeError):
            return None
        end = raw.get("end")
        if not (isinstance(seq, int) and isinstance(hash_, str) and isinstance(mac, str)):
            return None
        return cls(
            seq,
            hash_,
            key if isinstance(key, str) else None,
            mac,
            end if isinstance(end, int) else None,
        )


def _mac(body: str, key: bytes | None) -> str:
    data = b"accessguard checkpoint\n" + body.encode()
    if key is None:
        return hashlib.sha256(data).hexdigest()
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def checkpoint_path(trail: Path) -> Path:
    return trail.with_name(trail.name + CHECKPOINT_SUFFIX)


class CheckpointUnreadableError(ValueError):
    """A checkpoint file exists but does not hold a checkpoint."""


def read_checkpoint(trail: Path) -> Checkpoint | None:
    """The checkpoint beside ``trail``; None if there is none (ValueError if unreadable)."""
    try:
        text = checkpoint_path(trail).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise CheckpointUnreadableError(str(checkpoint_path(trail))) from None
    cp = Checkpoint.parse(text.strip())
    if cp is None:
        raise CheckpointUnreadableError(str(checkpoint_path(trail)))
    return cp


#: the checkpoint is one record of this size, overwritten in place (a rename over
#: an existing file costs a data flush on ext4, 1.5 ms here; one page write, ~1 us)
CHECKPOINT_SIZE = 512


def write_checkpoint(trail: Path, cp: Checkpoint, *, fsync: bool = False) -> None:
    """Overwrite the checkpoint beside ``trail``: one record, one write, in place.

    Called by a writer holding the trail's exclusive lock, after the batch it
    vouches for is on disk; readers take the shared lock. No fsync needed: a
    checkpoint lost in a crash leaves it behind the trail, which is allowed
    (the writer finds the event it vouches for at its byte offset).
    """
    record = cp.as_json().encode()
    if len(record) >= CHECKPOINT_SIZE:
        raise ValueError("checkpoint record too long")
    record += b" " * (CHECKPOINT_SIZE - 1 - len(record)) + b"\n"
    fd = os.open(checkpoint_path(trail), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        os.pwrite(fd, record, 0)
        if os.fstat(fd).st_size > CHECKPOINT_SIZE:
            os.ftruncate(fd, CHECKPOINT_SIZE)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def vouch(
    head: Head, last: Mapping[str, Any] | None, cp: Checkpoint | None, key: bytes | None
) -> str:
    """Why a sink must not chain onto ``head`` ("" when it may): the writer's own check.

    ``last`` is the event at the head (None for an empty trail), ``cp`` the
    checkpoint beside the trail. A trail keyed otherwise, a forged last event,
    a missing or foreign checkpoint and a tail cut below the checkpoint are
    refused: chaining onto them would hide what happened.
    """
    kid = key_id(key)
    if last is not None:
        if head.key != kid:
            return (
                f"it is keyed with key id {head.key} and this guard has "
                + (f"key id {kid}" if kid else f"no key (set {KEY_ENV})")
                if head.key
                else "it was written without a key; start a new trail for the keyed chain"
            )
        if key is not None and not hmac.compare_digest(
            chain_hash(str(last.get(PREV, "")), last, key), head.hash
        ):
            return "its last event does not match its MAC (forged?)"
    if cp is None:
        if last is None or SEQ not in last:
            return ""  # a new trail, or one of the old format (no positions to vouch for)
        return "there is no checkpoint beside it (deleted?)"
    if not cp.valid(key):
        return "its checkpoint does not match the key (forged, or another key)"
    if cp.seq > head.seq:
        return f"it ends at event {head.seq} but its checkpoint vouches for {cp.seq} (cut?)"
    if cp.seq == head.seq and cp.hash != head.hash:
        return "its last event is not the one its checkpoint vouches for (replaced?)"
    return ""
