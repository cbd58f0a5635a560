"""A real editing trace made non-ASCII (some letters mapped to 2-, 3- and 4-byte
characters), typed through pycrdt with character positions converted, then replayed
through the engine's document in order, in reverse and shuffled: the text is exactly the
trace's end content, mapped the same way (issue 19, part D)."""
from __future__ import annotations

import gzip
import json
import random

import pytest
from pycrdt import Doc, Text
from yjs_gen import TRACES, edit

from syncline.engine.documents import Document, PendingLimits

MAP = str.maketrans({"e": "é", "a": "ä", "o": "ø", "t": "ţ", "s": "€", "n": "ñ", "i": "🙂"})


def mapped_trace(name: str, limit: int) -> tuple[list[bytes], str]:
    with gzip.open(TRACES / name, "rt", encoding="utf-8") as f:
        trace = json.load(f)
    doc = Doc(client_id=7)
    text = doc.get("text", type=Text)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    shadow = ""  # the same edits on a plain string, by character
    for txn in trace["txns"]:
        for position, delete, insert in txn["patches"]:
            if len(updates) >= limit:
                return updates, shadow
            insert = insert.translate(MAP)
            with doc.transaction():
                edit(text, position, delete, insert)
            shadow = shadow[:position] + insert + shadow[position + delete:]
            assert str(text) == shadow
    return updates, shadow


@pytest.mark.skipif(not (TRACES / "automerge-paper.json.gz").exists(), reason="editing traces not present")
@pytest.mark.parametrize("order", ["in order", "reversed", "shuffled"])
def test_a_non_ascii_trace_converges_exactly(order):
    updates, want = mapped_trace("automerge-paper.json.gz", 3000)
    assert any(ord(c) > 0xFFFF for c in want) and any(0x7F < ord(c) < 0x800 for c in want)
    seq = list(updates)
    if order == "reversed":
        seq.reverse()
    elif order == "shuffled":
        random.Random(19).shuffle(seq)
    doc = Document(limits=PendingLimits())
    for u in seq:
        doc.apply_update(u)
    assert doc.text() == want and not doc.pending
