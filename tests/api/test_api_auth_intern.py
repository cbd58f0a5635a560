"""Principals built from equal role/permission claims share their frozensets (one per
role list, not two per WebSocket connection), through a bounded cache."""
from __future__ import annotations

import tracemalloc

from syncline.api import auth
from syncline.api.auth import ADMIN, CROSS_TENANT, READ, SYSTEM_READ, WRITE, principal_from_claims


def claims(user="alice", roles=("member",), perms=()):
    return {"sub": user, "tenant": "acme", "roles": list(roles), "perms": list(perms), "exp": 2_000_000_000}


def test_equal_claims_share_their_sets_whatever_the_order_and_repeats():
    a = principal_from_claims(claims("a", ["member", "admin"], ["cross_tenant_read"]))
    b = principal_from_claims(claims("b", ["admin", "member", "admin"], ["cross_tenant_read", "nonsense"]))
    assert a.roles == {"member", "admin"} and a.perms == {READ, WRITE, ADMIN, CROSS_TENANT, SYSTEM_READ}
    assert a.roles is b.roles and a.perms is b.perms


def test_role_lists_granting_the_same_permissions_share_one_perm_set():
    viewer, reader = principal_from_claims(claims(roles=["viewer"])), principal_from_claims(claims(roles=["reader"]))
    assert viewer.roles != reader.roles
    assert viewer.perms == {READ} and viewer.perms is reader.perms


def test_the_cache_stays_bounded_and_long_role_lists_are_not_cached():
    for i in range(auth._interned_sets.cache_info().maxsize + 50):
        p = principal_from_claims(claims(roles=["member", f"team-{i}"]))
        assert p.roles == {"member", f"team-{i}"} and p.perms == {READ, WRITE}
    info = auth._interned_sets.cache_info()
    assert info.currsize == info.maxsize
    many = [f"r{i}" for i in range(auth._INTERN_MAX_ROLES)] + ["admin"]
    x, y = principal_from_claims(claims(roles=many)), principal_from_claims(claims(roles=many))
    assert x.roles == set(many) and x.perms == {READ, WRITE, ADMIN, SYSTEM_READ}
    assert x.roles is not y.roles  # built per token: the cache never holds unbounded keys


def test_idle_connections_principals_are_small():
    principal_from_claims(claims())  # warm the cache
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept = [principal_from_claims(claims(f"user-{i:05d}")) for i in range(2000)]
    per = (tracemalloc.get_traced_memory()[0] - before) / len(kept)
    tracemalloc.stop()
    assert per < 250, per  # the Principal and its user name; two fresh frozensets were ~430 B more
