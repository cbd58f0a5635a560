"""docs/configuration.md names every key and its variable; the rules round-trip (property test)."""
from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from syncline.api.config_file import KEYS
from syncline.engine.records import config_from_rules, rules_of

DOC = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()


def test_every_key_is_documented_with_its_variable():
    missing = [k.dotted for k in KEYS if f"| `{k.name}` |" not in DOC or f"`{k.env_var}`" not in DOC]
    assert not missing
    for section in {k.section for k in KEYS} | {"roles", "resolution"}:
        assert f"[{section}]" in DOC, section


POLICY = st.sampled_from(["lww", "manual", "counter", "set_union", "max"])
NAME = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)
COLLECTION = st.fixed_dictionaries(
    {"default": POLICY, "strict": st.booleans(), "fields": st.dictionaries(NAME, POLICY, max_size=5)})


@given(st.dictionaries(NAME, COLLECTION, max_size=4), st.none() | COLLECTION)
def test_rules_round_trip(collections, default):
    rules = {"collections": collections, "default_collection": default}
    published = rules_of(config_from_rules(rules))
    assert published["collections"] == {c: {**v, "fields": dict(sorted(v["fields"].items()))}
                                         for c, v in sorted(collections.items())}
    assert published["default_collection"] == default
    assert rules_of(config_from_rules(published)) == published
    config = config_from_rules(published)
    for cname, coll in collections.items():
        for fname, policy in coll["fields"].items():
            strategy, merge = config.field_rule(cname, fname)
            assert (merge.name if merge is not None else str(strategy)) == policy
