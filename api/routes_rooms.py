"""REST view of a room's presence (class A)."""
from __future__ import annotations

from litestar import Request, get

from syncline.engine.errors import ValidationError
from syncline.engine.session import NAME_RE as ROOM_RE

from .auth import READ
from .deps import check_stream_access, gateway_of, principal_of, read_scope


@get("/rooms/{room:str}/presence", opt={"perm": READ}, summary="Who is in a room, and their ephemeral states")
async def room_presence(request: Request, room: str) -> dict:
    if not ROOM_RE.match(room):
        raise ValidationError("invalid room name", reason="invalid_room")
    check_stream_access(principal_of(request), f"room/{room}")  # (token scopes)
    tenant = await read_scope(request, resource=f"room:{room}")
    return await gateway_of(request).room_presence(tenant, room)


V1 = [room_presence]
