"""Signed audit checkpoints: keys, the signer, export, and the log-wide half of ``verify``.

What a checkpoint attests is defined in engine/auditlog.py. Here:

- keys: Ed25519 (``cryptography``). The private key lives outside the database, in a
  file (``SYNCLINE_AUDIT_KEY_FILE``) or an environment variable (``SYNCLINE_AUDIT_KEY``):
  PEM (PKCS#8) or the 32-byte raw key in base64 or hex. Verifying needs public keys only.
- :class:`AuditSigner`: attached to a store that has the key. It signs a checkpoint
  after every ``every`` appended events, after every commit holding a ``critical`` event,
  after every prune, on ``sync()`` (the class-D command route awaits it), and at close.
  Concurrent requests coalesce: at most one checkpoint is being written, and one more
  is queued.
- :func:`verify_audit`: checks the checkpoints (signature, chain, position, critical
  count, stream heads) against the log, the log against its head and the prune records,
  and optionally the database against an exported copy of the checkpoints.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import os
from pathlib import Path
from typing import Any, AsyncIterator, Iterable, Sequence

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import and_, func, insert, select
from sqlalchemy.exc import IntegrityError

from syncline.engine.auditlog import GENESIS_PREV, AuditProblem, Checkpoint, HeadsHash
from syncline.engine.errors import IntegrityViolation, ValidationError

from .schema import audit_checkpoints, events, log_head, prune_log, streams

log = logging.getLogger("syncline.store.audit")

_RETENTION_AT = 13  # index of "retention" in engine.logkernel.WRITE_COLUMNS
_WALK_CHUNK = 20_000


class AuditKeyInvalid(ValidationError):
    code = "audit_key_invalid"


# ------------------------------------------------------------------------- keys


def key_id(public: Ed25519PublicKey) -> str:
    """A short, stable name for a public key: 16 hex digits of its SHA-256."""
    import hashlib

    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _raw32(text: str) -> bytes | None:
    text = text.strip()
    for decode in (bytes.fromhex, lambda t: base64.b64decode(t, validate=True),
                   lambda t: base64.urlsafe_b64decode(t + "=" * (-len(t) % 4))):
        try:
            raw = decode(text)
        except (ValueError, binascii.Error):
            continue
        if len(raw) == 32:
            return raw
    return None


def parse_private_key(data: str | bytes) -> Ed25519PrivateKey:
    text = data.decode() if isinstance(data, bytes) else data
    if "-----BEGIN" in text:
        try:
            key = serialization.load_pem_private_key(text.encode(), password=None)
        except (ValueError, TypeError) as e:
            raise AuditKeyInvalid("the audit key is not a readable unencrypted PEM private key") from e
        if not isinstance(key, Ed25519PrivateKey):
            raise AuditKeyInvalid("the audit key must be an Ed25519 key")
        return key
    raw = _raw32(text)
    if raw is None:
        raise AuditKeyInvalid("the audit key must be PEM, or 32 bytes in hex or base64")
    return Ed25519PrivateKey.from_private_bytes(raw)


def parse_public_key(data: str | bytes) -> Ed25519PublicKey:
    text = data.decode() if isinstance(data, bytes) else data
    if "-----BEGIN" in text:
        try:
            if "PRIVATE KEY" in text:
                return parse_private_key(text).public_key()
            key = serialization.load_pem_public_key(text.encode())
        except (ValueError, TypeError) as e:
            raise AuditKeyInvalid("the audit public key is not a readable PEM key") from e
        if not isinstance(key, Ed25519PublicKey):
            raise AuditKeyInvalid("the audit public key must be an Ed25519 key")
        return key
    raw = _raw32(text)
    if raw is None:
        raise AuditKeyInvalid("the audit public key must be PEM, or 32 bytes in hex or base64")
    return Ed25519PublicKey.from_public_bytes(raw)


def _read(path: str, what: str) -> str:
    try:
        return Path(path).expanduser().read_text()
    except OSError as e:
        raise AuditKeyInvalid(f"cannot read the {what} file {path!r}: {e.strerror}") from e


def load_signing_key(key_file: str | None, key_value: str | None) -> Ed25519PrivateKey | None:
    """The private key from a file or a value (the file wins), or None if neither is set."""
    if key_file:
        return parse_private_key(_read(key_file, "audit key"))
    if key_value:
        return parse_private_key(key_value)
    return None


def load_public_keys(specs: Iterable[str]) -> dict[str, Ed25519PublicKey]:
    """Public keys by id; each spec is a file path (PEM or raw) or a literal key."""
    keys: dict[str, Ed25519PublicKey] = {}
    for spec in specs:
        spec = spec.strip()
        if not spec:
            continue
        text = _read(spec, "audit public key") if os.path.exists(os.path.expanduser(spec)) else spec
        pub = parse_public_key(text)
        keys[key_id(pub)] = pub
    return keys


def generate_key() -> tuple[bytes, bytes]:
    """A new key pair: (private PEM, public PEM)."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


def check_signature(cp: Checkpoint, keys: dict[str, Ed25519PublicKey]) -> str | None:
    """None if the checkpoint's signature verifies with its key; else why not."""
    pub = keys.get(cp.key)
    if pub is None:
        return f"signed by unknown key {cp.key!r}"
    try:
        pub.verify(bytes.fromhex(cp.signature), cp.body())
    except (InvalidSignature, ValueError):
        return "the signature does not verify"
    return None


# ------------------------------------------------------------------ checkpoints


def _row_to_checkpoint(r: Any) -> Checkpoint:
    return Checkpoint(seq=r.seq, position=r.position, time_us=r.time_us, heads=r.heads, streams=r.streams,
                      critical=r.critical, pruned=r.pruned, horizon=r.horizon, prev=r.prev, key=r.key,
                      signature=r.signature)


@contextlib.asynccontextmanager
async def _snapshot(store: Any) -> AsyncIterator[Any]:
    """A read transaction with one consistent view of the whole database."""
    _, r = store.engines
    async with r.connect() as conn:
        if r.dialect.name == "postgresql":
            conn = await conn.execution_options(isolation_level="REPEATABLE READ")
        async with conn.begin():
            yield conn


async def read_checkpoints(store: Any) -> list[Checkpoint]:
    async with _snapshot(store) as conn:
        rows = (await conn.execute(select(audit_checkpoints).order_by(audit_checkpoints.c.seq))).all()
    return [_row_to_checkpoint(r) for r in rows]


class HeadsCache:
    """A signer's heads hash as of the checkpoint it wrote last (``digest``), so the next
    one only re-reads the streams that changed since: O(events since), not O(streams)."""

    def __init__(self) -> None:
        self.heads: HeadsHash | None = None
        self.digest: str | None = None


async def write_checkpoint(store: Any, key: Ed25519PrivateKey, *, force: bool = False,
                           time_us: int | None = None, cache: HeadsCache | None = None) -> Checkpoint | None:
    """Sign the log as it is now and store the checkpoint. Returns None when nothing
    changed since the newest checkpoint (unless ``force``).

    The state is read in one snapshot; the insert is a separate short write, and its
    primary key (seq) serializes concurrent signers: the loser reads again and retries.
    """
    cache = cache if cache is not None else HeadsCache()
    for _attempt in range(5):
        async with _snapshot(store) as conn:
            position = (await conn.execute(select(log_head.c.position).where(log_head.c.id == 1))).scalar_one()
            prev_row = (await conn.execute(
                select(audit_checkpoints).order_by(audit_checkpoints.c.seq.desc()).limit(1))).first()
            prev = _row_to_checkpoint(prev_row) if prev_row is not None else None
            pruned, horizon = (await conn.execute(select(func.coalesce(func.sum(prune_log.c.count), 0),
                                                         func.coalesce(func.max(prune_log.c.anchor_position), 0)))
                               ).one()
            if prev is not None:
                if position < prev.position:
                    raise IntegrityViolation(
                        f"the log head ({position}) is behind the newest signed checkpoint ({prev.position}): "
                        "refusing to sign; run `syncline verify`")
                if not force and position == prev.position and pruned == prev.pruned:
                    return None
            since = prev.position if prev is not None else 0
            # Counted on from the previous checkpoint, not recounted: a critical event
            # deleted behind our back is never laundered into a new signature.
            critical = (prev.critical if prev is not None else 0) + (await conn.execute(
                select(func.count()).select_from(events).where(
                    events.c.position > since, events.c.position <= position, events.c.retention == "critical")
            )).scalar_one()
            head_cols = (streams.c.tenant, streams.c.stream, streams.c.version, streams.c.head_hash)
            if cache.heads is not None and prev is not None and cache.digest == prev.digest():
                heads = cache.heads  # as of prev: move the heads of the streams written since
                written = select(events.c.tenant, events.c.stream).where(
                    events.c.position > since, events.c.position <= position).distinct().subquery()
                changed = select(*head_cols).select_from(streams.join(
                    written, and_(streams.c.tenant == written.c.tenant, streams.c.stream == written.c.stream)))
                rows = (await conn.execute(changed)).all()
            else:
                heads = HeadsHash()
                rows = (await conn.execute(select(*head_cols))).all()
            cache.heads, cache.digest = None, None  # valid again only once this checkpoint is stored
            for t, s, v, h in rows:
                heads.set(t, s, v, bytes(h))
        now = time_us if time_us is not None else store._clock_us()
        unsigned = Checkpoint(
            seq=(prev.seq + 1) if prev is not None else 1, position=position, time_us=now,
            heads=heads.hexdigest(), streams=heads.streams, critical=int(critical), pruned=int(pruned),
            horizon=int(horizon), prev=prev.digest() if prev is not None else GENESIS_PREV,
            key=key_id(key.public_key()),
        )
        cp = Checkpoint(**{**_fields(unsigned), "signature": key.sign(unsigned.body()).hex()})
        w, _ = store.engines
        try:
            async with w.begin() as wconn:
                await wconn.execute(insert(audit_checkpoints).values(**_fields(cp)))
        except IntegrityError:
            continue  # another signer took this seq: sign again on top of it
        cache.heads, cache.digest = heads, cp.digest()
        return cp
    raise IntegrityViolation("could not store an audit checkpoint: other signers kept taking its number")


def _fields(cp: Checkpoint) -> dict[str, Any]:
    return {name: getattr(cp, name) for name in Checkpoint.__slots__}


class AuditSigner:
    """Writes checkpoints for one store. ``note`` is called by the store after each
    commit (cheap: it only counts); the signing itself runs in a background task."""

    def __init__(self, store: Any, key: Ed25519PrivateKey, *, every: int = 1000) -> None:
        self.store = store
        self.key = key
        self.key_id = key_id(key.public_key())
        self.every = max(1, int(every))
        self.since = 0  # events committed since the last checkpoint started
        self.written = 0
        self.failed = 0
        self.last: Checkpoint | None = None
        self._cache = HeadsCache()
        self._requested = 0  # generation of the newest request
        self._done = 0  # generation the newest finished checkpoint covers
        self._task: asyncio.Task | None = None
        self._changed: asyncio.Condition | None = None

    def note(self, values: Sequence[tuple]) -> None:
        self.since += len(values)
        if self.since >= self.every or any(v[_RETENTION_AT] == "critical" for v in values):
            self._request()

    def _request(self) -> int:
        self._requested += 1
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="audit-checkpoint")
        return self._requested

    async def _run(self) -> None:
        while self._done < self._requested:
            generation = self._requested
            self.since = 0
            try:
                cp = await write_checkpoint(self.store, self.key, cache=self._cache)
                if cp is not None:
                    self.last = cp
                    self.written += 1
            except Exception:
                self.failed += 1
                log.exception("audit.checkpoint_failed")
            self._done = generation
            cond = self._cond()
            async with cond:
                cond.notify_all()

    def _cond(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def sync(self) -> Checkpoint | None:
        """Return once a checkpoint that started after this call is stored."""
        generation = self._request()
        cond = self._cond()
        async with cond:
            await cond.wait_for(lambda: self._done >= generation)
        return self.last

    async def close(self) -> None:
        if self.since or (self._task is not None and not self._task.done()):
            await self.sync()


# ----------------------------------------------------------------------- verify


async def verify_audit(
    store: Any,
    public_keys: dict[str, Ed25519PublicKey],
    *,
    exported: Sequence[Checkpoint] = (),
    expect_signed: bool = False,
) -> tuple[list[AuditProblem], dict[str, int]]:
    """The log-wide checks of ``syncline verify`` (the per-stream hash chains are the
    store's ``verify``). Returns the problems and a few counts for the report."""
    problems: list[AuditProblem] = []

    def report(kind: str, detail: str, seq: int | None = None, position: int | None = None) -> None:
        problems.append(AuditProblem(kind, detail, seq, position))

    async with _snapshot(store) as conn:
        head = (await conn.execute(select(log_head.c.position).where(log_head.c.id == 1))).scalar_one()
        db_cps = [_row_to_checkpoint(r) for r in
                  (await conn.execute(select(audit_checkpoints).order_by(audit_checkpoints.c.seq))).all()]
        heads_rows = (await conn.execute(select(streams.c.tenant, streams.c.stream, streams.c.version,
                                                streams.c.anchor_version, streams.c.anchor_hash))).all()
        prunes = (await conn.execute(select(prune_log).order_by(prune_log.c.id))).all()
        n_events = (await conn.execute(select(func.count()).select_from(events))).scalar_one()

        # -- the prune records against the streams' anchors
        records: dict[tuple[str, str], list[Any]] = {}
        for p in prunes:
            records.setdefault((p.tenant, p.stream), []).append(p)
        horizon = 0
        for p in prunes:
            horizon = max(horizon, p.anchor_position or 0)
        anchored = 0
        for t, s, _v, anchor_version, anchor_hash in heads_rows:
            anchored += anchor_version
            recs = sorted(records.pop((t, s), []), key=lambda p: p.to_version)
            expect_from = 1
            why = None
            for p in recs:
                if p.from_version != expect_from or p.count != p.to_version - p.from_version + 1:
                    why = f"records do not tile versions 1..{anchor_version}"
                expect_from = p.to_version + 1
            if anchor_version and not recs:
                why = f"anchored at version {anchor_version} with no prune record"
            elif recs and (recs[-1].to_version != anchor_version or bytes(recs[-1].anchor_hash) != bytes(anchor_hash)):
                why = f"anchor (version {anchor_version}) differs from the last prune record"
            if why:
                report("prune_record_mismatch", f"{t}/{s}: {why}")
        for (t, s), _recs in sorted(records.items()):
            report("prune_record_mismatch", f"{t}/{s}: prune records for a stream that has no streams row")
        pruned_total = sum(p.count for p in prunes)

        # -- positions are gapless: every position up to the head is an event or was pruned
        if n_events + anchored != head:
            report("event_count_mismatch",
                   f"{n_events} events present + {anchored} pruned != log head {head}", position=head)

        # -- the checkpoints among themselves
        by_seq = {cp.seq: cp for cp in db_cps}
        if db_cps and not public_keys:
            report("no_public_key", f"{len(db_cps)} checkpoints, but no public key to check their signatures")
        prev: Checkpoint | None = None
        for i, cp in enumerate(db_cps):
            if public_keys and (why := check_signature(cp, public_keys)):
                report("checkpoint_signature", why, cp.seq, cp.position)
            expect_seq = prev.seq + 1 if prev is not None else 1
            expect_prev = prev.digest() if prev is not None else GENESIS_PREV
            if cp.seq != expect_seq:
                report("checkpoint_chain", f"checkpoint {expect_seq} is missing (next is {cp.seq})", cp.seq)
            elif cp.prev != expect_prev:
                report("checkpoint_chain", "does not link to the previous checkpoint", cp.seq)
            if prev is not None and (cp.position < prev.position or cp.critical < prev.critical
                                     or cp.pruned < prev.pruned):
                report("checkpoint_chain", "goes backwards from the previous checkpoint", cp.seq, cp.position)
            prev = cp
        extra: list[Checkpoint] = []
        for cp in exported:
            mine = by_seq.get(cp.seq)
            if public_keys and (why := check_signature(cp, public_keys)):
                report("checkpoint_signature", f"exported copy: {why}", cp.seq, cp.position)
            if mine is None:
                report("checkpoint_missing", "in the export but not in the database", cp.seq, cp.position)
                extra.append(cp)
            elif mine != cp:
                report("checkpoint_altered", "differs from the exported copy", cp.seq, cp.position)
                extra.append(cp)
        to_check = sorted(db_cps + extra, key=lambda c: (c.position, c.seq))
        if expect_signed and not to_check and head > 0:
            report("no_checkpoints", f"the log has {head} positions and no signed checkpoint")
        newest_signed = db_cps[-1] if db_cps else None
        if newest_signed is not None:
            if pruned_total > newest_signed.pruned:
                report("unsigned_prune", f"the prune records hold {pruned_total} deleted events; the newest "
                                         f"checkpoint attests {newest_signed.pruned}", newest_signed.seq)
            elif pruned_total == newest_signed.pruned and horizon != newest_signed.horizon:
                report("prune_record_mismatch", f"the prune records reach position {horizon}; the newest "
                                                f"checkpoint attests {newest_signed.horizon}", newest_signed.seq)
        for cp in to_check:
            if cp.position > head:
                report("checkpoint_ahead", f"signed position {cp.position} is past the log head {head}",
                       cp.seq, cp.position)
            if cp.pruned > pruned_total:
                report("checkpoint_pruned", f"attests {cp.pruned} pruned events; the prune records hold "
                                            f"{pruned_total}", cp.seq, cp.position)

        # -- walk the log in position order: heads and critical counts at each checkpoint
        hh = HeadsHash()
        for t, s, _v, anchor_version, anchor_hash in heads_rows:
            if anchor_version:
                hh.set(t, s, anchor_version, bytes(anchor_hash))
        critical = 0
        i = 0

        def check_at(cp: Checkpoint) -> None:
            if cp.position > head:
                return  # reported above
            if critical != cp.critical:
                report("checkpoint_critical", f"{critical} critical events up to its position; it attests "
                                              f"{cp.critical}", cp.seq, cp.position)
            # Below the prune horizon some heads as of the checkpoint are gone for good.
            if cp.position >= horizon and (hh.hexdigest() != cp.heads or hh.streams != cp.streams):
                report("checkpoint_heads", f"the stream heads at position {cp.position} differ from the "
                                           f"signed ones ({hh.streams} streams; it attests {cp.streams})",
                       cp.seq, cp.position)

        cursor = 0
        beyond = 0
        unsigned_critical = 0
        newest = to_check[-1].position if to_check else None
        while True:
            rows = (await conn.execute(
                select(events.c.position, events.c.tenant, events.c.stream, events.c.version, events.c.hash,
                       events.c.retention).where(events.c.position > cursor).order_by(events.c.position)
                .limit(_WALK_CHUNK))).all()
            if not rows:
                break
            for pos, t, s, v, h, retention in rows:
                while i < len(to_check) and to_check[i].position < pos:
                    check_at(to_check[i])
                    i += 1
                if pos > head:
                    beyond += 1
                hh.set(t, s, v, bytes(h))
                if retention == "critical":
                    critical += 1
                    if newest is not None and pos > newest:
                        unsigned_critical += 1
                    elif newest is None and expect_signed:
                        unsigned_critical += 1
            cursor = rows[-1][0]
        while i < len(to_check):
            check_at(to_check[i])
            i += 1
        if beyond:
            report("position_beyond_head", f"{beyond} events have positions past the log head {head}")
        if unsigned_critical and (to_check or expect_signed):
            report("unsigned_critical", f"{unsigned_critical} critical events after the newest checkpoint "
                                        f"(position {newest or 0}); critical events are always signed",
                   position=newest)
    stats = {"head": head, "checkpoints": len(db_cps), "events": n_events, "pruned": pruned_total,
             "critical": critical}
    return problems, stats


def read_export(path: str) -> list[Checkpoint]:
    """Checkpoints from a file ``syncline audit export`` wrote (JSON lines)."""
    import json

    out: list[Checkpoint] = []
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ValidationError(f"cannot read {path!r}: {e.strerror}") from e
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(Checkpoint.from_dict(json.loads(line)))
        except (ValueError, KeyError, TypeError) as e:
            raise ValidationError(f"{path}:{n}: not a checkpoint ({type(e).__name__})") from e
    return out


def audit_options(settings: Any) -> dict[str, Any]:
    """``open_store`` options for signing, from the settings (none without a key)."""
    key = load_signing_key(settings.audit_key_file, settings.audit_key)
    if key is None:
        return {}
    return {"audit_key": key, "audit_checkpoint_every": settings.audit_checkpoint_every}


def public_keys_from(settings: Any, extra: Iterable[str] = ()) -> dict[str, Ed25519PublicKey]:
    """The verifier's keys: those given, those configured, and the signing key's own."""
    keys = load_public_keys([*extra, *settings.audit_public_keys])
    key = load_signing_key(settings.audit_key_file, settings.audit_key)
    if key is not None:
        keys[key_id(key.public_key())] = key.public_key()
    return keys
