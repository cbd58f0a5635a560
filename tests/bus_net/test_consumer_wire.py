"""engine/consumer_wire.py: the subscription document both surfaces accept (pure)."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncline.engine.consumer_wire import Limits, parse_filter, parse_ids, parse_spec
from syncline.engine.errors import TenantViolation, ValidationError
from syncline.engine.events import Actor, RecordedEvent, Retention


def event(data, type_="item.added", stream="orders/1") -> RecordedEvent:
    return RecordedEvent(id="e", tenant="acme", stream=stream, version=1, position=1, type=type_, schema=1,
                         time_us=0, actor=Actor("u", ""), clock={}, data=data, meta={}, retention=Retention.STANDARD)


def test_defaults_per_kind_and_limits():
    g = parse_spec({"group": "billing"}, "acme")
    assert (g.kind, g.partitions, g.lease_s, g.max_batch, g.max_attempts, g.start_at, g.filter) == (
        "group", 16, 30.0, 100, 3, "earliest", None)
    assert parse_spec({"group": "mailer", "kind": "durable"}, "acme").partitions == 1
    b = parse_spec({"kind": "broadcast"}, "acme")
    assert b.group == "broadcast" and b.start_at == "latest"
    with pytest.raises(ValidationError):
        parse_spec({"group": "g", "max_batch": 51}, "acme", Limits(batch_max=50))
    with pytest.raises(ValidationError) as e:
        parse_spec({"group": "g", "lease_s": True}, "acme")
    assert e.value.details["field"] == "lease_s"
    with pytest.raises(ValidationError):
        parse_spec({"group": "g", "surprise": 1}, "acme")
    with pytest.raises(ValidationError):
        parse_spec({"group": "g", "lease_s": float("nan")}, "acme")


def test_filters_match_what_they_say():
    f = parse_filter({"types": ["item.*"], "prefixes": ["orders/"],
                      "where": [["customer.country", "eq", "DE"], {"path": "n", "op": "in", "value": [1, 2]}]}, "acme")
    assert f.matches(event({"customer": {"country": "DE"}, "n": 2}))
    assert not f.matches(event({"customer": {"country": "FR"}, "n": 2}))
    assert not f.matches(event({"customer": {"country": "DE"}, "n": 3}))
    assert not f.matches(event({"customer": {"country": "DE"}, "n": 1}, type_="note.added"))
    assert not f.matches(event({"customer": {"country": "DE"}, "n": 1}, stream="audit/1"))
    assert parse_filter({"tenant": "acme"}, "acme") is None  # (own tenant, nothing else: everything)
    with pytest.raises(TenantViolation):
        parse_filter({"tenant": "globex"}, "acme")
    for bad in ({"where": [["a", "eq", {"nested": 1}]]}, {"where": [["a..b", "eq", 1]]}, {"where": "a=1"},
                {"where": [["a", "eq"]]}, {"types": [""]}, {"streams": ["x"] * 65}, [],
                {"where": [["a", "in", [[1]]]]}):
        with pytest.raises(ValidationError):
            parse_filter(bad, "acme")


def test_ids():
    assert parse_ids(["a.1", "a.2"], 10) == ["a.1", "a.2"]
    for bad in ([], ["x"] * 11, [1], "a.1", [""]):
        with pytest.raises(ValidationError):
            parse_ids(bad, 10)


scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.sampled_from(["DE", "FR", ""]))


@given(value=scalars, data=st.dictionaries(st.sampled_from(["a", "b"]), scalars, max_size=2),
       values=st.lists(scalars, max_size=4))
def test_a_wire_predicate_is_the_python_one(value, data, values):
    eq = parse_filter({"where": [["a", "eq", value]]}, "acme")
    assert eq.matches(event(data)) == ("a" in data and data["a"] == value)
    isin = parse_filter({"where": [["a", "in", values]]}, "acme")
    assert isin.matches(event(data)) == ("a" in data and data["a"] in tuple(values))
