"""Yjs updates for engine tests: replicas editing one text concurrently, by character
position (pycrdt counts UTF-8 bytes: positions are converted), and a document's state
as a comparable value."""
from __future__ import annotations

import gzip
import json
import os
import random
from pathlib import Path

from pycrdt import Doc, Text

from syncline.engine.documents import Document
from syncline.engine.ynews import DeleteSetIndex
from syncline.engine.yparse import SKIP, parse_update

# Real editing traces (josephg/editing-traces), where the machine has them: as the
# benchmarks look for them (benchmarks/_trace_updates.py); tests that need one skip without.
_BESIDE = Path(__file__).resolve().parents[3] / "shared" / "data" / "traces"
TRACES = Path(os.environ.get("SYNCLINE_TRACES_DIR") or _BESIDE)
ALPHABET = "abcxyz é漢😀"  # ASCII, 2-, 3- and 4-byte UTF-8 (the last is 2 UTF-16 units)


def byte_offset(s: str, i: int) -> int:
    return len(s[:i].encode("utf-8"))


def edit(text: Text, position: int, delete: int, insert: str) -> None:
    """Delete ``delete`` characters at character ``position``, then insert ``insert``
    there (one keystroke; a replace when both), converting to pycrdt's byte offsets."""
    s = str(text)
    lo = byte_offset(s, position)
    if delete:
        del text[lo : byte_offset(s, position + delete)]
    if insert:
        text.insert(lo, insert)


def concurrent_updates(rnd: random.Random, steps: int, clients: int = 3) -> list[bytes]:
    """Updates from ``clients`` replicas typing, deleting and replacing, syncing now and
    then (a sync's update merges what the receiver lacked)."""
    replicas = [Doc(client_id=1000 + i) for i in range(clients)]
    updates: list[bytes] = []
    for d in replicas:
        d.observe(lambda event: updates.append(event.update))
    for _ in range(steps):
        d = rnd.choice(replicas)
        text = d.get("text", type=Text)
        n = len(str(text))
        k = rnd.random()
        if k < 0.08 and clients > 1:
            other = rnd.choice(replicas)
            if other is not d:
                d.apply_update(other.get_update(d.get_state()))
            continue
        with d.transaction():
            if k < 0.6 or n == 0:
                edit(text, rnd.randint(0, n), 0, "".join(rnd.choices(ALPHABET, k=rnd.randint(1, 3))))
            elif k < 0.85:
                p = rnd.randrange(n)
                edit(text, p, rnd.randint(1, min(3, n - p)), "")
            else:
                p = rnd.randrange(n)
                edit(text, p, rnd.randint(1, min(3, n - p)), rnd.choice(ALPHABET))
    return updates


def state_of(doc: Document) -> tuple:
    """What a document holds, as ids: per client the struct clock ranges it has
    (integrated or waiting) and the delete set, both merged."""
    parsed = parse_update(doc.encode_state())
    structs = DeleteSetIndex()
    for run in parsed.runs:
        for clock, length, kind, _, _, _ in run.structs:
            if kind != SKIP:
                structs.add(run.client, clock, length)
    deletes = DeleteSetIndex.of(parsed.deletes)
    return (
        {c: structs.ranges(c) for c in structs.clients()},
        {c: deletes.ranges(c) for c in deletes.clients() if deletes.ranges(c)},
    )


def trace_keystrokes(name: str, limit: int, client_id: int = 1) -> tuple[list[bytes], str]:
    """One update per patch of an editing trace in ``TRACES``."""
    with gzip.open(TRACES / name, "rt", encoding="utf-8") as f:
        trace = json.load(f)
    doc = Doc(client_id=client_id)
    text = doc.get("text", type=Text)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    for txn in trace["txns"]:
        for position, delete, insert in txn["patches"]:
            if len(updates) >= limit:
                return updates, str(text)
            with doc.transaction():
                edit(text, position, delete, insert)
    return updates, str(text)


def agent_bursts(name: str, limit: int, agents: int = 3, turn: int = 150) -> tuple[list[list[bytes]], str]:
    """The first ``limit`` keystrokes of a trace typed by ``agents`` replicas taking
    turns of ``turn`` keystrokes; each syncs with the one before it when its turn
    comes, so its keystrokes build on theirs. Returns each agent's keystroke updates
    (its burst) and the final text."""
    with gzip.open(TRACES / name, "rt", encoding="utf-8") as f:
        trace = json.load(f)
    docs = [Doc(client_id=100 + i) for i in range(agents)]
    bursts: list[list[bytes]] = [[] for _ in range(agents)]
    syncing = [False]
    for i, d in enumerate(docs):
        # An agent sends what each of its own transactions made (not what it received).
        d.observe(lambda e, i=i: None if syncing[0] else bursts[i].append(e.update))
    patches = [p for txn in trace["txns"] for p in txn["patches"]][:limit]
    who = 0
    for k, (position, delete, insert) in enumerate(patches):
        if k and k % turn == 0:
            prev, who = who, (who + 1) % agents
            syncing[0] = True
            docs[who].apply_update(docs[prev].get_update(docs[who].get_state()))
            syncing[0] = False
        doc = docs[who]
        with doc.transaction():
            edit(doc.get("text", type=Text), position, delete, insert)
    return bursts, str(docs[who].get("text", type=Text))
