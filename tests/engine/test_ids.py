import uuid

from hypothesis import given
from hypothesis import strategies as st

from syncline.engine.ids import uuid7


@given(st.integers(0, 2**48 - 1), st.integers(0, 2**48 - 1), st.binary(min_size=10, max_size=10),
       st.binary(min_size=10, max_size=10))
def test_uuid7_is_valid_and_sorts_by_time(t1, t2, r1, r2):
    a, b = uuid7(t1, r1), uuid7(t2, r2)
    ua = uuid.UUID(a)
    assert ua.version == 7 and ua.variant == uuid.RFC_4122 and str(ua) == a
    if t1 < t2:
        assert a < b
    assert uuid7(t1, r1) == a  # deterministic in its inputs


@given(st.integers(0, 2**48 - 1), st.integers(0, 40), st.randoms(use_true_random=False))
def test_uuid7_many_are_valid_distinct_and_sort_with_uuid7(t, n, rnd):
    from syncline.engine.ids import uuid7_many

    rand = rnd.randbytes(10 * n)
    ids = uuid7_many(t, rand, n)
    assert len(ids) == n and ids == uuid7_many(t, rand, n)  # deterministic in its inputs
    for i, s in enumerate(ids):
        u = uuid.UUID(s)
        assert u.version == 7 and u.variant == uuid.RFC_4122 and str(u) == s
        assert u.int >> 80 == t  # the millisecond prefix
        assert uuid7(t - 1, b"\xff" * 10) < s < uuid7(t + 1, bytes(10)) or t in (0, 2**48 - 1)
        chunk = int.from_bytes(rand[10 * i:10 * i + 10], "big")
        # the 74 random bits come from this id's own 10 bytes
        assert (u.int >> 64) & 0xFFF == chunk >> 68
        assert u.int & 0xFFFF_FFFF_FFFF == (chunk >> 4) & 0xFFFF_FFFF_FFFF
    if n > 1 and len(set(rand[i:i + 10] for i in range(0, 10 * n, 10))) == n:
        assert len(set(ids)) == n
