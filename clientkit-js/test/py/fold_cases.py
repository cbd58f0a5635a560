"""Random record op histories reconciled by the server's engine (engine.records.reconcile),
printed as JSON for clientkit-js's fold tests: the record.patched events in log order and,
after each case, every record's encoded state (encode_record_state), values and conflicts.

    python test/py/fold_cases.py [--cases N] [--seed S]

Clients write concurrently (each knows the record clock only as of its last "sync"), with
colliding wall times, deletes, merge operands and resolutions of manual conflicts, so the
JS fold meets every rule of kernel.apply_changes.
"""
from __future__ import annotations

import argparse
import json
import random

from syncline.engine.clocks import HLCTimestamp, VectorClock
from syncline.engine.records import (
    MANUAL,
    RECORD_PATCHED,
    ClientOp,
    CollectionPolicy,
    RecordsState,
    ResolutionConfig,
    encode_record_state,
    merged,
    reconcile,
    wire_values,
)


def config(flip: bool) -> ResolutionConfig:
    fields = {"title": MANUAL, "likes": merged("counter"), "tags": merged("set_union"), "top": merged("max")}
    if flip:  # the same fields under other strategies: a strategy change over a field's life
        fields = {"title": merged("set_union"), "likes": MANUAL, "tags": MANUAL, "top": merged("counter")}
    return ResolutionConfig({"notes": CollectionPolicy(fields=fields)}, default_collection=CollectionPolicy())


def value(rng: random.Random, field: str, flip: bool):
    kind = {"title": "set_union" if flip else "text", "likes": "text" if flip else "int",
            "tags": "text" if flip else "set", "top": "int" if flip else "num"}.get(field, "text")
    if kind == "int":
        return rng.randint(-3, 5)
    if kind == "set":
        return rng.sample(["a", "b", 1, 2, "c"], rng.randint(0, 3))
    if kind == "set_union":
        return rng.sample(["x", "y", 3], rng.randint(1, 2))
    if kind == "num":
        return rng.choice([1, 2.5, -1, 7, 0.5])
    return rng.choice(["alpha", "beta", "gamma", None, 3, {"k": [1, 2]}])


def deliver(state, op, cfg, events, position):
    r = reconcile(state, [op], cfg)
    for se in r.events:
        if se.event.type == RECORD_PATCHED:
            position += 1
            events.append({"type": RECORD_PATCHED, "stream": se.stream, "position": position, "data": se.event.data,
                           "clock": dict(se.event.clock)})
    return r.state, position


def case(rng: random.Random, n_ops: int) -> dict:
    streams = ["rec/notes/1", "rec/notes/2", "rec/todo/1"]
    clients = ["ca", "cb", "cc"]
    known: dict[tuple[str, str], VectorClock] = {}
    counters: dict[tuple[str, str], int] = {}
    state = RecordsState()
    events = []
    position = 0
    wall = 1_700_000_000_000
    delayed: list = []
    flip_at = rng.randint(n_ops // 2, n_ops) if rng.random() < 0.3 else None
    for i in range(n_ops):
        flip = flip_at is not None and i >= flip_at
        cfg = config(flip)
        c = rng.choice(clients)
        s = rng.choice(streams)
        rec = state.records.get(s)
        if rng.random() < 0.4 and rec is not None:
            known[(c, s)] = rec.clock  # the client syncs: it has seen everything so far
        base = known.get((c, s), VectorClock())
        n = counters.get((c, s), 0) + 1
        counters[(c, s)] = n
        own = VectorClock({**dict(base.items()), c: max(n, base.get(c) + 1)})
        counters[(c, s)] = own.get(c)
        known[(c, s)] = own
        wall += rng.choice([0, 0, 1, 5])
        hlc = HLCTimestamp(wall, rng.randint(0, 1), c)
        op_id = f"{c}.{i}"
        conflicts = rec.conflicts() if rec is not None else ()
        if conflicts and rng.random() < 0.5:
            cf = rng.choice(conflicts)
            if rng.random() < 0.7:
                op = cf.resolution(op_id=op_id, client=c, user="u", hlc=hlc, choice=rng.choice(cf.versions).stamp.op_id,
                                   base_clock=own)
            else:
                op = cf.resolution(op_id=op_id, client=c, user="u", hlc=hlc, choice="custom", value="mine",
                                   base_clock=own)
            known[(c, s)] = op.clock
            counters[(c, s)] = op.clock.get(c)
        else:
            fields = rng.sample(["title", "likes", "tags", "top", "body"], rng.randint(1, 3))
            sets = {f: value(rng, f, flip) for f in fields}
            deletes = ()
            if rng.random() < 0.2:
                d = rng.choice(["title", "body"])
                sets.pop(d, None)
                if not (flip and d == "title"):  # (a merge field cannot be deleted)
                    deletes = (d,)
            if not sets and not deletes:
                sets = {"body": "x"}
            op = ClientOp(op_id, c, "u", s, own, hlc, sets, deletes)
        # Some ops arrive late (a client that was offline): later writes, its own included,
        # may already cover them when they do.
        if rng.random() < 0.15:
            delayed.append((op, cfg))
        else:
            state, position = deliver(state, op, cfg, events, position)
        if delayed and rng.random() < 0.3:
            late, late_cfg = delayed.pop(rng.randrange(len(delayed)))
            state, position = deliver(state, late, late_cfg, events, position)
    for late, late_cfg in delayed:
        state, position = deliver(state, late, late_cfg, events, position)
    return {
        "events": events,
        "states": {s: encode_record_state(r) for s, r in state.records.items()},
        "values": {s: wire_values(r) for s, r in state.records.items()},
        "conflicts": {s: [c.id for c in r.conflicts()] for s, r in state.records.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=40)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    print(json.dumps([case(rng, rng.randint(5, 60)) for _ in range(args.cases)]))


if __name__ == "__main__":
    main()
