"""Yjs updates built from editing traces, for benchmarks (issue 19 D).

Where the traces come from (:func:`open_trace`): real editing traces (josephg/editing-traces,
CC BY 4.0) are read from ``$SYNCLINE_TRACES_DIR``, by default ``../shared/data/traces/``
beside the checkout, where the project's machines keep them; nothing is downloaded. A
clone without them (or ``SYNCLINE_TRACES_DIR`` pointing at a folder without them) gets a
trace generated from a fixed seed instead (:func:`generate_trace`), the same size as the
real one, and every benchmark says which it used: ``automerge-paper.json.gz`` or
``generated(seed=1)`` on its table and in its JSON line (``"trace"``). Figures from a
generated trace are comparable with each other, not with figures from the real one.

A trace is ``{"startContent", "endContent", "txns": [{"patches": [[position, deleted,
inserted], ...]}, ...]}``: applying every patch in order to ``startContent`` gives
``endContent``. Positions are in characters of the text as it is at that moment. pycrdt's ``Text`` counts UTF-8 bytes
(pycrdt 0.14.13: ``len`` of "é漢😀x" is 10; ``insert(2, "A")`` lands after "é";
``insert(1, "A")``, inside "é", appends at the end instead). So every edit here goes
through :class:`CharText`, a plain-string mirror of the text that converts character
positions to byte offsets, and the pycrdt text is checked against the mirror at the end.

``NON_ASCII`` swaps some letters for 2-, 3- and 4-byte characters (the same swap as
``benchmarks/fanout.py --non-ascii``): both traces here are ASCII only.
"""
from __future__ import annotations

import gzip
import json
import os
import random
from pathlib import Path

import pycrdt

TEXT = "text"
# Letters swapped for 2-, 3- and 4-byte UTF-8 characters (as fanout.py --non-ascii).
NON_ASCII = str.maketrans({"e": "é", "o": "ø", "a": "ä", "s": "ß", "t": "€", "i": "😀"})
Patch = tuple[int, int, str]  # (character position, characters deleted, text inserted)


TRACES_ENV = "SYNCLINE_TRACES_DIR"
DEFAULT_TRACES_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "traces"
# The real traces' sizes (keystrokes), which a generated stand-in copies, and its seed.
TRACE_KEYSTROKES = {"automerge-paper.json.gz": 259_778, "friendsforever_flat.json.gz": 26_078}
GENERATED_SEEDS = {"automerge-paper.json.gz": 1, "friendsforever_flat.json.gz": 2}


def traces_dir() -> Path:
    """Where real traces are looked for: ``$SYNCLINE_TRACES_DIR``, else ``../shared/data/traces``."""
    env = os.environ.get(TRACES_ENV)
    return Path(env) if env else DEFAULT_TRACES_DIR


def load_trace(path: Path) -> dict:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return json.load(f)


def open_trace(name: str) -> tuple[dict, str]:
    """The trace ``name`` (a file name in :func:`traces_dir`, or a path to one) and its
    label: the file name when it is there, else ``generated(seed=S)``, a generated trace
    of the real one's size."""
    bare = not Path(name).is_absolute() and len(Path(name).parts) == 1
    path = traces_dir() / name if bare else Path(name)
    if path.is_file():
        return load_trace(path), path.name
    if not bare or name not in TRACE_KEYSTROKES:
        # A path or a name the user gave: say so rather than stand something else in for it.
        raise FileNotFoundError(f"no trace at {path}")
    seed = GENERATED_SEEDS[name]
    return generate_trace(seed, TRACE_KEYSTROKES[name]), f"generated(seed={seed})"


# The generator's typist: mostly types at the cursor, sometimes deletes what it just typed,
# moves the cursor elsewhere or pastes a phrase, as a person writing prose does.
_WORDS = ("the", "log", "event", "sync", "offline", "merge", "a", "of", "to", "and", "is", "client", "server",
          "document", "record", "we", "it", "on", "in", "conflict", "clock", "replica", "state", "order")


def generate_trace(seed: int, keystrokes: int) -> dict:
    """A synthetic editing trace in the real traces' format, the same for the same seed:
    ``keystrokes`` patches of one character typed at a cursor (about 85%), a backspace
    (10%), or a word pasted or deleted after a jump of the cursor (5%). Its
    ``endContent`` is computed by applying the patches, so it checks like a real trace."""
    rnd = random.Random(seed)
    text = CharText()
    length = cursor = 0
    pending = ""  # the rest of the word being typed
    patches: list[list] = []
    while len(patches) < keystrokes:
        r = rnd.random()
        if r < 0.85 or length == 0:
            if not pending:
                pending = rnd.choice(_WORDS) + (".\n" if rnd.random() < 0.05 else " ")
            ch, pending = pending[0], pending[1:]
            patch = [cursor, 0, ch]
            cursor += 1
        elif r < 0.95 and cursor > 0:
            patch = [cursor - 1, 1, ""]
            cursor -= 1
        else:
            cursor = rnd.randint(0, length)
            if rnd.random() < 0.5 or cursor == length:
                word = rnd.choice(_WORDS) + " "
                patch = [cursor, 0, word]
                cursor += len(word)
            else:
                n = min(rnd.randint(1, 8), length - cursor)
                patch = [cursor, n, ""]
            pending = ""
        text.edit(patch[0], patch[1], patch[2])
        length += len(patch[2]) - patch[1]
        patches.append(patch)
    return {"startContent": "", "endContent": str(text), "txns": [{"patches": [p]} for p in patches],
            "generated": {"seed": seed, "keystrokes": keystrokes}}


def patches_of(trace: dict, limit: int | None = None, *, non_ascii: bool = False) -> list[Patch]:
    """The trace's keystrokes (one patch each), in order."""
    out: list[Patch] = []
    for txn in trace["txns"]:
        for position, delete, insert in txn["patches"]:
            if limit is not None and len(out) >= limit:
                return out
            out.append((position, delete, insert.translate(NON_ASCII) if non_ascii else insert))
    return out


def end_content(trace: dict, *, non_ascii: bool = False) -> str:
    end = trace["endContent"]
    return end.translate(NON_ASCII) if non_ascii else end


def start_content(trace: dict, *, non_ascii: bool = False) -> str:
    start = trace.get("startContent") or ""
    return start.translate(NON_ASCII) if non_ascii else start


class CharText:
    """A text as plain strings in blocks, edited by character position; each edit
    returns the UTF-8 byte range it deletes (where pycrdt's ``Text`` must be cut and
    inserted into). Finding a position walks the blocks: O(length / BLOCK)."""

    BLOCK = 1024

    def __init__(self, s: str = "") -> None:
        b = self.BLOCK
        self.blocks = [s[i : i + b] for i in range(0, len(s), b)] or [""]
        self.nbytes = [len(x.encode("utf-8")) for x in self.blocks]

    def _find(self, pos: int) -> tuple[int, int, int]:
        """(block, character offset in it, bytes before the block) of ``pos``."""
        chars = nbytes = 0
        nb = self.nbytes
        for i, block in enumerate(self.blocks):
            n = len(block)
            if pos <= chars + n:
                return i, pos - chars, nbytes
            chars += n
            nbytes += nb[i]
        raise IndexError(f"position {pos} past the end ({chars})")

    def char(self, pos: int) -> str:
        i, off, _ = self._find(pos + 1)
        return self.blocks[i][off - 1]

    def edit(self, pos: int, delete: int, insert: str) -> tuple[int, int]:
        """Delete ``delete`` characters at ``pos`` and insert ``insert`` there; returns
        the byte range ``(lo, hi)`` deleted, in the text as it was."""
        i, off, before = self._find(pos)
        blocks, nb = self.blocks, self.nbytes
        block = blocks[i]
        while off + delete > len(block):  # the deletion runs into the next blocks
            if i + 1 >= len(blocks):
                raise IndexError(f"deleting {delete} at {pos}: past the end")
            block += blocks.pop(i + 1)
            nb[i] += nb.pop(i + 1)
        head = block[:off]
        gone = block[off : off + delete]
        lo = before + (off if nb[i] == len(block) else len(head.encode("utf-8")))
        hi = lo + (len(gone) if gone.isascii() else len(gone.encode("utf-8")))
        new = head + insert + block[off + delete :]
        size = nb[i] - (hi - lo) + (len(insert) if insert.isascii() else len(insert.encode("utf-8")))
        b = self.BLOCK
        if len(new) > 2 * b:
            parts = [new[k : k + b] for k in range(0, len(new), b)]
            blocks[i : i + 1] = parts
            nb[i : i + 1] = [len(p.encode("utf-8")) for p in parts]
        elif not new and len(blocks) > 1:
            del blocks[i]
            del nb[i]
        else:
            blocks[i] = new
            nb[i] = size
        return lo, hi

    def __str__(self) -> str:
        return "".join(self.blocks)


def replay(patches: list[Patch], start: str = "") -> str:
    """The text the patches make, with plain strings (no pycrdt): the reference."""
    t = CharText(start)
    for position, delete, insert in patches:
        t.edit(position, delete, insert)
    return str(t)


def _apply(text: pycrdt.Text, mirror: CharText, position: int, delete: int, insert: str) -> None:
    lo, hi = mirror.edit(position, delete, insert)
    if delete:
        del text[lo:hi]
    if insert:
        text.insert(lo, insert)


def type_updates(patches: list[Patch], start: str = "", client_id: int | None = None) -> tuple[list[bytes], str]:
    """One update per patch (delete and insert of a patch in one transaction), as an
    editor would send them, plus one for ``start`` if any; returns (updates, text).
    Raises AssertionError if pycrdt's text is not the mirror's at the end."""
    doc = pycrdt.Doc() if client_id is None else pycrdt.Doc(client_id=client_id)
    text = doc.get(TEXT, type=pycrdt.Text)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    mirror = CharText()
    if start:
        _apply(text, mirror, 0, 0, start)
    for position, delete, insert in patches:
        with doc.transaction():
            _apply(text, mirror, position, delete, insert)
    final = str(text)
    assert final == str(mirror), "pycrdt text differs from the character-position mirror"
    return updates, final


def with_replaces(patches: list[Patch], every: int = 20, start: str = "") -> tuple[list[Patch], int]:
    """The same keystrokes with every ``every``-th one made a replace: an insert of
    ``c`` at ``p`` becomes "delete the character at p-1, insert it again followed by
    c" (one patch, so one transaction). The text is the same after every keystroke.
    When the ``every``-th keystroke is not an insert after the first character, the
    next one that is becomes the replace. Returns (patches, number of replaces)."""
    mirror = CharText(start)
    out: list[Patch] = []
    due = False
    replaces = 0
    for k, (position, delete, insert) in enumerate(patches):
        if (k + 1) % every == 0:
            due = True
        patch = (position, delete, insert)
        if due and not delete and insert and position > 0:
            patch = (position - 1, 1, mirror.char(position - 1) + insert)
            due = False
            replaces += 1
        mirror.edit(*patch)
        out.append(patch)
    return out, replaces


def agent_bursts(
    patches: list[Patch], agents: int = 3, turn: int = 150, start: str = ""
) -> tuple[list[list[bytes]], str]:
    """The keystrokes typed by ``agents`` replicas taking turns of ``turn`` keystrokes;
    each syncs from the one before it when its turn comes, so it has every keystroke
    so far and its own build on them. Returns each agent's own updates (its burst,
    what it would send after working offline) and the final text (checked against
    the mirror)."""
    docs = [pycrdt.Doc(client_id=100 + i) for i in range(agents)]
    bursts: list[list[bytes]] = [[] for _ in range(agents)]
    syncing = [False]
    for i, d in enumerate(docs):
        # An agent sends what its own transactions made, not what it received.
        d.observe(lambda e, i=i: None if syncing[0] else bursts[i].append(e.update))
    mirror = CharText()
    who = 0
    if start:
        with docs[0].transaction():
            _apply(docs[0].get(TEXT, type=pycrdt.Text), mirror, 0, 0, start)
    for k, (position, delete, insert) in enumerate(patches):
        if k and k % turn == 0:
            prev, who = who, (who + 1) % agents
            syncing[0] = True
            docs[who].apply_update(docs[prev].get_update(docs[who].get_state()))
            syncing[0] = False
        doc = docs[who]
        with doc.transaction():
            _apply(doc.get(TEXT, type=pycrdt.Text), mirror, position, delete, insert)
    final = str(docs[who].get(TEXT, type=pycrdt.Text))
    assert final == str(mirror), "pycrdt text differs from the character-position mirror"
    return bursts, final


def shuffled_with_duplicates(updates: list[bytes], rnd: random.Random, share: float = 0.05) -> list[bytes]:
    """The updates plus ``share`` of them again (random picks), all shuffled."""
    out = updates + [rnd.choice(updates) for _ in range(round(len(updates) * share))]
    rnd.shuffle(out)
    return out
