import uuid

from hypothesis import given
from hypothesis import strategies as st

from engine.ids import uuid7


@given(st.integers(0, 2**48 - 1), st.integers(0, 2**48 - 1), st.binary(min_size=10, max_size=10),
       st.binary(min_size=10, max_size=10))
def test_uuid7_is_valid_and_sorts_by_time(t1, t2, r1, r2):
    a, b = uuid7(t1, r1), uuid7(t2, r2)
    ua = uuid.UUID(a)
    assert ua.version == 7 and ua.variant == uuid.RFC_4122 and str(ua) == a
    if t1 < t2:
        assert a < b
    assert uuid7(t1, r1) == a  # deterministic in its inputs
