"""engine.yparse reads the structure of Yjs v1 updates as yrs does: the clocks it
computes match yrs's state vector, and pieces cut from an update apply to the same
document as the update itself."""
from __future__ import annotations

import random

from pycrdt import Array, Doc, Map, Text, XmlElement, XmlFragment, XmlText

from syncline.engine.yparse import (
    SKIP,
    Unparsed,
    client_id,
    client_key,
    parse_delete_set,
    parse_state_vector,
    parse_update,
    single_delete,
    struct_piece,
)


def _many_kinds(rnd: random.Random) -> tuple[list[bytes], list[Doc]]:
    docs = [Doc(client_id=300 + i) for i in range(2)]
    updates: list[bytes] = []
    for d in docs:
        d.observe(lambda e: updates.append(e.update))
    for step in range(120):
        d = rnd.choice(docs)
        text, m, a = d.get("text", type=Text), d.get("map", type=Map), d.get("arr", type=Array)
        k = rnd.random()
        s = str(text)
        with d.transaction():
            if k < 0.3:
                text.insert(len(s[: rnd.randint(0, len(s))].encode()), rnd.choice(["a", "é", "😀x"]))
            elif k < 0.4 and s:
                text.format(0, len(s[:1].encode()), {"bold": True})
            elif k < 0.5:
                m[rnd.choice("abc")] = rnd.choice(
                    [1, -7, 2.5, 2**40, "x", None, True, [1, {"q": [None, "é"]}], b"\x00\xff"]
                )
            elif k < 0.6:
                a.append(rnd.choice([1, "y", {"k": "v"}]))
            elif k < 0.65:
                m["nested"] = Map({"inner": Array([1, 2])})
            elif k < 0.7:
                frag = d.get("xml", type=XmlFragment)
                frag.children.append(XmlElement("p", {"class": "c"}, [XmlText("hi")]))
            elif k < 0.75:
                m["sub"] = Doc()
            elif k < 0.85 and len(a):
                del a[0]
            elif k < 0.9 and len(m):
                del m[next(iter(m.keys()))]
            else:
                other = docs[1] if d is docs[0] else docs[0]
                d.apply_update(other.get_update(d.get_state()))
        if step % 40 == 39:
            for x in docs:
                for y in docs:
                    if x is not y:
                        x.apply_update(y.get_update(x.get_state()))
    return updates, docs


def test_clocks_match_yrs_on_every_kind_of_content():
    updates, docs = _many_kinds(random.Random(3))
    mirror: dict[bytes, int] = {}
    replay = Doc()
    for u in updates + [d.get_update() for d in docs]:
        parsed = parse_update(u)
        replay.apply_update(u)
        for run in parsed.runs:
            for clock, length, kind, _, _, _ in run.structs:
                if kind != SKIP and length:
                    mirror[run.client] = max(mirror.get(run.client, 0), clock + length)
        assert mirror == parse_state_vector(replay.get_state())
        assert parsed.ds_start <= len(u)


def test_pieces_cut_from_an_update_apply_like_the_update():
    _, docs = _many_kinds(random.Random(5))
    state = docs[0].get_update()
    parsed = parse_update(state)
    whole, cut = Doc(), Doc()
    whole.apply_update(state)
    for run in parsed.runs:  # one struct at a time, in clock order
        for i in range(len(run.structs)):
            if run.structs[i][2] != SKIP:
                cut.apply_update(struct_piece(state, run.client, run.structs, i, i + 1))
    cut.apply_update(b"\x00" + state[parsed.ds_start :])  # the delete set alone
    assert cut.get_state() == whole.get_state()
    assert _view(cut) == _view(whole)


def _view(doc: Doc) -> tuple:
    m = doc.get("map", type=Map)
    return (
        str(doc.get("text", type=Text)),
        doc.get("text", type=Text).diff(),
        doc.get("arr", type=Array).to_py(),
        {k: v.guid if isinstance(v, Doc) else v.to_py() if hasattr(v, "to_py") else v
         for k, v in m.items()},
        str(doc.get("xml", type=XmlFragment)),
    )


def test_delete_sets_and_state_vectors():
    c = client_key(123456789)
    assert client_id(c) == 123456789
    ds = b"\x00\x01" + c + b"\x02\x05\x03\x80\x01\x02"
    assert parse_delete_set(ds, 1) == {c: [(5, 3), (128, 2)]}
    assert parse_update(ds).deletes == {c: [(5, 3), (128, 2)]}
    assert single_delete(b"\x00\x01" + c + b"\x01\x05\x03") == (c, 5, 3)
    assert single_delete(ds) is None
    for bad in (b"\x00\x01" + c + b"\x02\x05", b"\x00\x05", b"\x00\x00\x00"):
        try:
            parse_delete_set(bad, 1)
        except Unparsed:
            continue
        raise AssertionError(bad)


def test_non_canonical_client_ids_are_not_read():
    """A client id written with a redundant zero group would be a second key for one
    client: refused here (the document then has yrs re-encode the update)."""
    u = b"\x01\x01\x85\x00\x00\x04\x01\x04text\x01a\x00"  # client 5 as 0x85 0x00
    try:
        parse_update(u)
    except Unparsed:
        return
    raise AssertionError("read")
