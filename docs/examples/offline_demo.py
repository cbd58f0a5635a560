"""Offline demo: two clients edit the same note while offline, then come back and merge.

Run a server and mint tokens first:

    syncline serve --port 8000 &
    python docs/examples/offline_demo.py --url http://127.0.0.1:8000 \
        --alice "$(syncline token --tenant acme --user alice)" \
        --bob "$(syncline token --tenant acme --user bob)"

With the server's default configuration every field is last-writer-wins; field-level
merging is visible (each side's new fields survive, the later write wins a shared one).
"""
from __future__ import annotations

import argparse
import asyncio
import uuid

from clientkit.client import SynclineClient


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--alice", required=True, help="a token for alice")
    ap.add_argument("--bob", required=True, help="a token for bob")
    args = ap.parse_args()
    note = f"rec/notes/{uuid.uuid4().hex[:8]}"
    alice = SynclineClient(args.url, args.alice, user="alice")
    bob = SynclineClient(args.url, args.bob, user="bob")
    for c, name in ((alice, "alice"), (bob, "bob")):
        c.on("on_status", lambda status, name=name: print(f"  [{name}] {status}"))
        c.on("on_conflict", lambda cf, name=name: print(f"  [{name}] conflict on {cf.field}: "
                                                         f"{[(w.stamp.user, w.value) for w in cf.versions]}"))
        await c.start()
    await alice.wait_until(lambda: alice.status == "online" and bob.status == "online", 10)

    alice.set(note, {"title": "Shopping", "items": "milk"})
    await alice.wait_synced(10)
    await bob.wait_until(lambda: bob.get(note).get("title") == "Shopping", 10)
    print("both online:", bob.get(note))

    print("going offline...")
    await alice.go_offline()
    await bob.go_offline()
    alice.set(note, {"items": "milk, eggs", "owner": "alice"})
    bob.set(note, {"title": "Groceries", "due": "friday"})
    print("alice offline sees:", alice.get(note), f"({alice.pending} queued)")
    print("bob offline sees:  ", bob.get(note), f"({bob.pending} queued)")

    print("coming back...")
    alice.go_online()
    bob.go_online()
    await alice.wait_synced(10)
    await bob.wait_synced(10)
    await alice.wait_until(lambda: alice.get(note) == bob.get(note), 10)
    print("merged, alice:", alice.get(note))
    print("merged, bob:  ", bob.get(note))
    await alice.close()
    await bob.close()


if __name__ == "__main__":
    asyncio.run(main())
