"""Updates that wait for others, indexed by what they wait for.

A Yjs struct integrates once its client's earlier clocks are in the document and the
ids it names (origin, right origin, parent item) are there too; a deletion applies
once the ids it deletes are there. yrs keeps what is not ready in one merged pending
update, retried as a whole, and pycrdt 0.14 (yrs 0.28) loses updates that way (one
client's keystrokes 0, 2, 3, 1 give a document without 3). So the engine holds them
itself, as Yjs does with its pending structs and delete sets, and feeds yrs only what
is ready:

- :meth:`PendingIndex.plan` cuts an update (parsed by :mod:`engine.yparse`) into the
  pieces that integrate now and the parts that wait, without changing anything. A
  waiting run of structs waits on one missing id ``(client, clock)``; waiting
  deletions wait, merged per client, for their client's clock to reach them. It
  raises :class:`NeverFits` for an update that can never integrate: a struct naming
  itself or its own client's future as a neighbour or parent, parts of the update
  waiting on each other in a cycle, or a part waiting on an id refused before as
  never fitting.
- :meth:`PendingIndex.commit` records the plan and returns the pieces that the new
  state unblocks, transitively. A part is looked at again only when the client it
  waits on moves past the clock it needs: applying N updates in any order costs a
  constant factor more than in order (each struct is scanned once, plus once per
  dependency it had to wait on).

Pieces are bytes of the original update re-framed (each struct's encoding is
self-contained): a run of consecutive structs of one client, or a delete set.

``sv`` is the state vector of what yrs has integrated (yrs only ever gets ready pieces,
so it never holds a hole or a pending update of its own).
"""
from __future__ import annotations

from dataclasses import dataclass
from heapq import heapify, heappop, heappush

from .ynews import DeleteSetIndex
from .yparse import SKIP, ClientKey, ParsedUpdate, Struct, delete_piece, struct_piece

_DEL_BYTES = 16  # what a waiting delete range counts for in the byte bound


class NeverFits(Exception):
    """Some struct of the update can never integrate."""

    def __init__(self, reason: str, ids: list[tuple[ClientKey, int]]) -> None:
        super().__init__(reason)
        self.reason = reason
        self.ids = ids  # (client, clock) of the structs that never fit


class _Run:
    """Structs ``i:`` of one client's run, waiting. Keeps a copy of their bytes only
    (``src`` from offset ``base`` of the update), not the whole update."""

    __slots__ = ("base", "client", "dead", "i", "nbytes", "src", "structs")

    def __init__(self, src: bytes, client: ClientKey, structs: list[Struct], i: int) -> None:
        base = structs[i][4]
        self.src = src[base : structs[-1][5]]
        self.base = base
        self.client = client
        self.structs = structs
        self.i = i
        self.nbytes = len(self.src)
        self.dead = False

    def piece(self, lo: int, hi: int) -> bytes:
        return struct_piece(self.src, self.client, self.structs, lo, hi, self.base)


@dataclass(slots=True)
class Plan:
    """What applying one update does now: the pieces to feed yrs (``whole``: the update
    itself is ready, feed it as is), the deletions that apply now, the parts that wait
    (and what that adds to the pile), and the state vector entries that move."""

    parsed: ParsedUpdate
    src: bytes
    whole: bool
    slices: list[tuple[int, int, int]]  # (run index, lo, hi)
    ready_dels: dict[ClientKey, list[tuple[int, int]]]
    waiting_runs: list[tuple[int, int, tuple[ClientKey, int]]]  # (run, i, what it waits on)
    waiting_dels: list[tuple[ClientKey, int, int]]  # (client, clock, length)
    moved: dict[ClientKey, int]
    hold_parts: int = 0
    hold_bytes: int = 0

    @property
    def waits(self) -> bool:
        return bool(self.waiting_runs or self.waiting_dels)

    def struct_pieces(self) -> list[bytes]:
        if self.whole:
            return [self.src]
        runs = self.parsed.runs
        return [struct_piece(self.src, runs[r].client, runs[r].structs, lo, hi)
                for r, lo, hi in self.slices]


class PendingIndex:
    """The waiting parts of one document, and the state vector they are judged by."""

    __slots__ = ("_dels", "_runs", "_seq", "held", "nbytes", "parts", "poison", "sv")

    def __init__(self, sv: dict[ClientKey, int]) -> None:
        self.sv = sv
        # client -> heap of (clock, seq, run): the run waits until sv[client] > clock
        self._runs: dict[ClientKey, list[tuple[int, int, _Run]]] = {}
        # Deletions waiting for their ids, merged per client (all at or past sv[client]).
        self._dels = DeleteSetIndex()
        self._seq = 0
        self.parts = 0  # waiting runs plus waiting delete ranges
        self.nbytes = 0
        # client -> the lowest clock refused as never fitting (while not integrated)
        self.poison: dict[ClientKey, int] = {}
        # Struct ranges held by waiting runs (cleared when nothing waits).
        self.held = DeleteSetIndex()

    def __bool__(self) -> bool:
        return self.parts > 0

    # -- planning --------------------------------------------------------------

    def plan(self, parsed: ParsedUpdate, src: bytes) -> Plan:
        """Cut an update into what integrates now and what waits (changes nothing)."""
        runs = parsed.runs
        sv = self.sv
        if len(runs) == 1 and len(runs[0][1]) == 1:
            # One struct (a keystroke): ready, or go the general way.
            client, structs = runs[0]
            clock, length, kind, deps, _, _ = structs[0]
            cur = sv.get(client, 0)
            if kind != SKIP and length and clock <= cur:
                for dc, dk in deps:
                    if dc == client:
                        if dk >= clock:
                            raise NeverFits("names_itself", [(client, clock)])
                    elif dk >= sv.get(dc, 0):
                        break
                else:
                    end = max(clock + length, cur)
                    for c, ranges in parsed.deletes.items():
                        lim = end if c == client else sv.get(c, 0)
                        for k, n in ranges:
                            if k + n > lim:
                                break
                        else:
                            continue
                        break
                    else:
                        return Plan(parsed, src, True, [], {}, [], [], {client: end})
        _static_check(parsed)
        local: dict[ClientKey, int] = {}
        waits: dict[ClientKey, list[tuple[int, int]]] = {}  # client -> heap of (clock, run)
        state = [0] * len(runs)
        blocked: list[tuple[ClientKey, int] | None] = [None] * len(runs)
        slices: list[tuple[int, int, int]] = []
        queue = list(range(len(runs) - 1, -1, -1))
        while queue:
            r = queue.pop()
            run = runs[r]
            client = run.client
            start = local.get(client)
            if start is None:
                start = sv.get(client, 0)
            i, block, cur = _scan(run.structs, state[r], client, start, local, sv, slices, r)
            state[r] = i
            blocked[r] = block
            if block is not None:
                heappush(waits.setdefault(block[0], []), (block[1], r))
            if cur > start:
                heap = waits.get(client)
                while heap and heap[0][0] < cur:
                    queue.append(heappop(heap)[1])
        waiting_runs = [(r, state[r], b) for r, b in enumerate(blocked) if b is not None]
        if waiting_runs:
            self._check_waits(parsed, waiting_runs, state)
        ready_dels: dict[ClientKey, list[tuple[int, int]]] = {}
        waiting_dels: list[tuple[ClientKey, int, int]] = []
        for client, ranges in parsed.deletes.items():
            have = local.get(client)
            if have is None:
                have = sv.get(client, 0)
            for clock, length in ranges:
                end = clock + length
                if clock < have:
                    ready_dels.setdefault(client, []).append((clock, min(end, have) - clock))
                if end > have:
                    lo = max(clock, have)
                    waiting_dels.append((client, lo, end - lo))
        plan = Plan(parsed, src, not waiting_runs and not waiting_dels, slices, ready_dels,
                    waiting_runs, waiting_dels, local)
        held = self.held
        for r, i, _ in waiting_runs:  # (a run already waiting as a copy adds nothing)
            run = runs[r]
            if not _all_held(held, run.client, run.structs, i):
                plan.hold_parts += 1
                plan.hold_bytes += run.structs[-1][5] - run.structs[i][4]
        dels = self._dels
        for client, clock, length in waiting_dels:
            if not dels.covers(client, clock, length):
                plan.hold_parts += 1
                plan.hold_bytes += _DEL_BYTES
        return plan

    def _check_waits(self, parsed: ParsedUpdate,
                     waiting: list[tuple[int, int, tuple[ClientKey, int]]],
                     state: list[int]) -> None:
        """Refuse parts that wait on ids refused before, or on each other in a cycle."""
        poison = self.poison
        sv = self.sv
        if poison:
            for _, _, (client, clock) in waiting:
                p = poison.get(client)
                if p is not None:
                    if sv.get(client, 0) > p:
                        del poison[client]  # the refused clock arrived after all
                    elif clock >= p:
                        raise NeverFits("waits_on_refused", [(client, clock)])
        # A part waits on (c, k); if the update's own waiting part of client c holds k,
        # follow what that part waits on. Coming back to a part already on the path is
        # a cycle: none of them can ever integrate.
        runs = parsed.runs
        by_client = {runs[r].client: (r, i, b) for r, i, b in waiting}
        verdict: dict[int, bool] = {}  # run index -> waits on something outside (True)
        for r, _, _ in waiting:
            path: list[int] = []
            on_path: set[int] = set()
            cur = r
            result = True
            while True:
                if cur in verdict:
                    result = verdict[cur]
                    break
                if cur in on_path:
                    result = False
                    break
                path.append(cur)
                on_path.add(cur)
                _, _, (bc, bk) = by_client[runs[cur].client]
                nxt = by_client.get(bc)
                if nxt is None or not _holds(runs[nxt[0]].structs, nxt[1], bk):
                    break
                cur = nxt[0]
            for p_ in path:
                verdict[p_] = result
            if not result:
                ids = [(runs[p_].client, runs[p_].structs[state[p_]][0]) for p_ in path]
                raise NeverFits("cycle", ids)

    # -- committing ------------------------------------------------------------

    def commit(self, plan: Plan) -> list[bytes]:
        """Record a plan whose pieces yrs has integrated; return the pieces that the
        new state unblocks (struct pieces first, then one delete set), to feed in order."""
        sv = self.sv
        moved = plan.moved
        for client, clock in moved.items():
            if clock > sv.get(client, 0):
                sv[client] = clock
        if plan.waiting_runs:
            runs = plan.parsed.runs
            held = self.held
            for r, i, (bc, bk) in plan.waiting_runs:
                run = runs[r]
                if _all_held(held, run.client, run.structs, i):
                    continue  # a copy of a run already waiting
                part = _Run(plan.src, run.client, run.structs, i)
                self._seq += 1
                heappush(self._runs.setdefault(bc, []), (bk, self._seq, part))
                self.parts += 1
                self.nbytes += part.nbytes
                for s in run.structs[i:]:
                    if s[1] and s[2] != SKIP:
                        held.add(run.client, s[0], s[1])
        if plan.waiting_dels:
            dels = self._dels
            for client, clock, length in plan.waiting_dels:
                before = dels.count(client)
                dels.add(client, clock, length)
                grown = dels.count(client) - before
                self.parts += grown
                self.nbytes += _DEL_BYTES * grown
        if not self.parts:
            return []
        return self.wake(list(moved))

    def _done(self, part: _Run) -> None:
        part.dead = True
        self.parts -= 1
        self.nbytes -= part.nbytes
        if not self.parts:
            self.held = DeleteSetIndex()

    def wake(self, clients: list[ClientKey]) -> list[bytes]:
        """The pieces that became ready since ``clients`` moved (transitively)."""
        sv = self.sv
        waiting = self._runs
        dels = self._dels
        out: list[bytes] = []
        ready_dels: dict[ClientKey, list[tuple[int, int]]] = {}
        work = list(clients)
        while work:
            client = work.pop()
            cur = sv.get(client, 0)
            before = dels.count(client)
            if before:
                taken = dels.take_below(client, cur)
                if taken:
                    ready_dels.setdefault(client, []).extend(taken)
                    gone = before - dels.count(client)
                    self.parts -= gone
                    self.nbytes -= _DEL_BYTES * gone
            heap = waiting.get(client)
            if not heap:
                continue
            while heap and heap[0][0] < cur:
                _, _, part = heappop(heap)
                if part.dead:
                    continue
                moved = self._advance(part, out)
                if moved is not None:
                    work.append(moved)
            if not heap:
                del waiting[client]
        if ready_dels:
            out.append(delete_piece(ready_dels))
        if not self.parts:
            self.held = DeleteSetIndex()
        return out

    def _advance(self, part: _Run, out: list[bytes]) -> ClientKey | None:
        """Scan a woken run: emit what is ready, wait again or finish. Returns its
        client when that client's clock moved."""
        sv = self.sv
        client = part.client
        before = sv.get(client, 0)
        slices: list[tuple[int, int, int]] = []
        try:
            i, block, cur = _scan(part.structs, part.i, client, before, {}, sv, slices, 0)
        except NeverFits as e:  # (static checks make this unreachable; belt and braces)
            self._done(part)
            for c, k in e.ids:
                self.poison[c] = min(self.poison.get(c, k), k)
            return None
        for _, lo, hi in slices:
            out.append(part.piece(lo, hi))
        part.i = i
        if cur > before:
            sv[client] = cur
        if block is None:
            self._done(part)
        else:
            self._seq += 1
            heappush(self._runs.setdefault(block[0], []), (block[1], self._seq, part))
        return client if cur > before else None

    # -- refusing and reading ----------------------------------------------------

    def refuse(self, ids: list[tuple[ClientKey, int]]) -> None:
        """Remember ids refused as never fitting: what waits on them never fits either.
        Waiting runs that wait on those clients at or past those clocks are dropped."""
        sv = self.sv
        changed = False
        for client, clock in ids:
            if clock < sv.get(client, 0):
                continue
            if clock < self.poison.get(client, clock + 1):
                self.poison[client] = clock
                changed = True
        if not changed:
            return
        dropped = False
        for client, clock in self.poison.items():
            heap = self._runs.get(client)
            if not heap:
                continue
            keep = []
            for entry in heap:
                part = entry[2]
                if part.dead:
                    continue
                if entry[0] >= clock:
                    self._done(part)
                    dropped = True
                else:
                    keep.append(entry)
            heapify(keep)
            heap[:] = keep
        if dropped and self.parts:
            held = DeleteSetIndex()
            for part in self._live_runs():
                for s in part.structs[part.i:]:
                    if s[1] and s[2] != SKIP:
                        held.add(part.client, s[0], s[1])
            self.held = held

    def _live_runs(self) -> list[_Run]:
        return [e[2] for heap in self._runs.values() for e in heap if not e[2].dead]

    def waiting_pieces(self) -> list[bytes]:
        """Everything waiting, as updates (for a snapshot that keeps it)."""
        out = [p.piece(p.i, len(p.structs)) for p in self._live_runs()]
        dels = self._dels
        waiting = {c: dels.ranges(c) for c in dels.clients()}
        if waiting:
            out.append(delete_piece(waiting))
        return out

    def waiting_deletes(self) -> dict[ClientKey, list[tuple[int, int]]]:
        dels = self._dels
        return {c: dels.ranges(c) for c in dels.clients()}

    def holds(self, client: ClientKey, clock: int, length: int) -> bool:
        """Whether waiting parts hold the structs ``[clock, clock + length)`` of ``client``."""
        return self.held.covers(client, clock, length)


def _static_check(parsed: ParsedUpdate) -> None:
    """A struct that names its own id, or a later one of its client, as origin, right
    origin or parent can never integrate (a well-formed update never does that: the
    neighbours of an insertion existed before it)."""
    for run in parsed.runs:
        client = run.client
        for s in run.structs:
            for dc, dk in s[3]:
                if dc == client and dk >= s[0]:
                    raise NeverFits("names_itself", [(client, s[0])])


def _scan(structs: list[Struct], i: int, client: ClientKey, cur: int,
          local: dict[ClientKey, int], sv: dict[ClientKey, int],
          slices: list[tuple[int, int, int]], r: int,
          ) -> tuple[int, tuple[ClientKey, int] | None, int]:
    """Walk a run from struct ``i`` with the client at clock ``cur``: append the ready
    slices (as (r, lo, hi)) and stop at the first struct that waits. ``local`` holds
    clocks moved during this plan (read before ``sv``; updated for ``client``).
    Returns (next index, what it waits on or None, the client's clock)."""
    n = len(structs)
    lo = -1
    block: tuple[ClientKey, int] | None = None
    while i < n:
        clock, length, kind, deps, _, _ = structs[i]
        end = clock + length
        if not length:
            i += 1  # no effect (yrs drops it); inside an open slice it just rides along
            continue
        if end <= cur:  # already there
            if lo >= 0:
                slices.append((r, lo, i))
                lo = -1
            i += 1
            continue
        if kind == SKIP:  # a hole in the update: what follows needs the hole filled
            block = (client, end - 1)
            break
        if clock > cur:  # an earlier clock of this client is missing
            block = (client, clock - 1)
            break
        for dc, dk in deps:
            have = cur if dc == client else local.get(dc)
            if have is None:
                have = sv.get(dc, 0)
            if dk >= have:
                if dc == client:
                    raise NeverFits("names_itself", [(client, clock)])
                block = (dc, dk)
                break
        if block is not None:
            break
        if lo < 0:
            lo = i
        cur = end
        local[client] = cur
        i += 1
    if lo >= 0:
        slices.append((r, lo, i))
    return i, block, cur


def _holds(structs: list[Struct], i: int, clock: int) -> bool:
    """Whether structs ``i:`` hold ``clock`` (in a struct with content, not a hole)."""
    if not structs or clock < structs[i][0]:
        return False
    for s in structs[i:]:
        if s[0] <= clock < s[0] + s[1]:
            return s[2] != SKIP
    return False


def _all_held(held: DeleteSetIndex, client: ClientKey, structs: list[Struct], i: int) -> bool:
    """Whether every struct of ``structs[i:]`` is already held by a waiting run."""
    return all(
        held.covers(client, s[0], s[1]) for s in structs[i:] if s[1] and s[2] != SKIP
    )
