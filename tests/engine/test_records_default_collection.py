"""A default collection policy: any collection accepted, named ones keep their own rules."""
from __future__ import annotations

from syncline.engine.clocks import HLCTimestamp, VectorClock
from syncline.engine.records import ClientOp, CollectionPolicy, RecordsState, ResolutionConfig, merged, reconcile


def op(stream, n, **values):
    return ClientOp(op_id=f"o{n}", client="c", user="u", stream=stream, clock=VectorClock({"c": n}),
                    hlc=HLCTimestamp(n, 0, "c"), set=values)


def test_unnamed_collections_use_the_default_and_named_ones_their_policy():
    cfg = ResolutionConfig({"notes": CollectionPolicy(fields={"likes": merged("counter")}, strict=True)},
                           default_collection=CollectionPolicy())
    r = reconcile(RecordsState(), [op("rec/anything/1", 1, title="x"), op("rec/notes/1", 2, likes=2),
                                   op("rec/notes/1", 3, other=1), op("rec/bad name/1", 4, a=1)], cfg)
    kinds = [(o.kind.value, o.reason.value if o.reason else None) for o in r.outcomes]
    assert kinds[0] == ("applied", None) and kinds[1] == ("applied", None)
    assert kinds[2] == ("rejected", "invalid_field")  # strict named collection still strict
    assert kinds[3][0] == "rejected"
    assert r.state.get("rec/anything/1").values() == {"title": "x"}


def test_without_a_default_unnamed_collections_are_rejected():
    cfg = ResolutionConfig({"notes": CollectionPolicy()})
    [o] = reconcile(RecordsState(), [op("rec/other/1", 1, a=1)], cfg).outcomes
    assert (o.kind.value, o.reason.value) == ("rejected", "unknown_collection")
