"""The root's admin endpoint server: each request is answered in its own task, so a slow one (a reload waiting for its
new workers) does not hold up `status` or `workers`; requests that change state still run one after another, in the
order they came, in one task of their own. A change its client's timeout (the request's timeout_ms, counted from its
arrival) ran out on while it waited for its turn is refused, not carried out: that client has reported it unanswered.

The ROUTER socket is read by one task and written from any (gateway.bus.zmq_trio.PumpedSocket: sends never block, a
ROUTER drops a reply to a peer that has gone). A request that does not decode is answered at once, without a task;
at most MAX_IN_FLIGHT requests are answered at a time, and one past that is refused with `busy` rather than queued
without bound. The size cap (MAX_REQUEST_BYTES, and ZeroMQ's MAXMSGSIZE set by bind_admin) is unchanged; as
MAXMSGSIZE bounds each frame, not a message, one whose envelope is longer than a ROUTER's (an identity, a REQ's
empty delimiter) gets no answer at all, as ZeroMQ gives none to a frame over MAXMSGSIZE.

A tcp endpoint is a CURVE server whose clients the root's ZAP handler lets in (open_admin; gateway.bus.curve): its
key files (gateway.admin_curve) are start settings, as the endpoint is.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import trio
import zmq

from gateway.bus.admin_protocol import AdminProtocolError, AdminReply, AdminRequest, decode_request, encode_reply
from gateway.bus.admin_server import AdminCommandError, bind_admin
from gateway.bus.curve import KeyFileError, ZapHandler, read_key_pair
from gateway.bus.zmq_trio import PumpedSocket
from gateway.config.schema import AdminCurve, GatewaySettings

log = logging.getLogger("gateway.admin")

MAX_IN_FLIGHT = 64  # requests answered at once (a reload and the reads made meanwhile need a handful)
# The frames before the request that a reply echoes: the identity the ROUTER adds (at most 255 bytes in ZMTP), a REQ's
# or a DEALER's empty delimiter, a hop or two through a proxy; a longer envelope is dropped unanswered.
MAX_ENVELOPE_FRAMES = 4
MAX_ENVELOPE_BYTES = 1024
READ_ONLY = {"status": None, "workers": None,  # (None: any action)
             "breakers": frozenset({"list"}), "limits": frozenset({"list", "show"}), "targets": frozenset({"list"}),
             "proxy-cache": frozenset({"list", "get"})}

AdminHandler = Callable[[AdminRequest], Awaitable[Any]]


def open_admin(ctx: zmq.Context, endpoint: str, curve: AdminCurve | None) -> tuple[zmq.Socket, ZapHandler | None]:
    """The root's admin socket, bound (bind_admin); a tcp endpoint's with its ZAP handler, bound before it so that no
    handshake goes unchecked. ValueError, naming the setting, for what cannot be bound."""
    if curve is None or not endpoint.startswith("tcp://"):
        return bind_admin(ctx, endpoint), None
    try:
        keys = read_key_pair(curve.secret_key_file)
    except KeyFileError as e:
        raise ValueError(f"gateway.admin_curve.secret_key_file: {e}") from None
    zap = ZapHandler(ctx, curve.authorized_keys)
    try:
        return bind_admin(ctx, endpoint, keys), zap
    except BaseException:
        zap.close()
        raise


def curve_changes(running: GatewaySettings, loaded: GatewaySettings) -> list[str]:
    """The admin_curve settings a reloaded config changes (after `gateway.`), which take effect at the next start as
    gateway.admin does: the root's ZAP handler reads the authorized_keys directory it started with."""
    before, after = running.admin_curve, loaded.admin_curve
    if before is None or after is None:
        return [] if before is after else ["admin_curve"]
    return [f"admin_curve.{name}" for name in ("secret_key_file", "authorized_keys")
            if getattr(before, name) != getattr(after, name)]


def changes_state(request: AdminRequest) -> bool:
    """Whether the request may change something (reload, stop, a breaker opened, a target drained ...), and so waits
    for those before it; a read, or a command no one knows (an error either way), is answered at once."""
    if request.cmd not in READ_ONLY:
        return request.cmd in ("reload", "stop")
    actions = READ_ONLY[request.cmd]
    return actions is not None and request.args.get("action", "list") not in actions


def late(request: AdminRequest) -> str:
    """The refusal of a change dequeued past its client's timeout; logged, as that client is gone ("no answer")."""
    log.warning("admin: %s %s not carried out: it waited behind earlier changes past its client's timeout (%d ms)",
                request.cmd, request.args, request.timeout_ms)
    return (f"not carried out: it waited behind earlier changes past the client's timeout ({request.timeout_ms} ms); "
            "nothing was changed")


def time_left(request: AdminRequest, deadline: float | None) -> AdminRequest:
    """`request` with timeout_ms what is left of its client's timeout now, for the handler's own deadlines (the
    keeper's: gateway.node.root); as it is without one."""
    if deadline is None:
        return request
    left = max(int((deadline - trio.current_time()) * 1000), 1)
    return msgspec.structs.replace(request, timeout_ms=left)


async def answer(handler: AdminHandler, request: AdminRequest) -> AdminReply:
    """The handler's result as a reply; its refusal (AdminCommandError) or failure as an error reply."""
    try:
        return AdminReply(ok=True, result=await handler(request))
    except AdminCommandError as e:
        return AdminReply(ok=False, error=str(e))
    except Exception as e:
        log.exception("admin command %s failed", request.cmd)
        return AdminReply(ok=False, error=f"internal error: {type(e).__name__}: {e}")


async def serve_admin(sock: zmq.Socket, handler: AdminHandler,
                      task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Answer requests until cancelled (the tasks answering are cancelled with it). REQ clients (empty delimiter
    frame) and DEALER clients both work; a DEALER that sends several requests may get the replies in another order."""
    # Changes go through one queue and one task, in the order they arrived (tasks started together run in any order),
    # each with its client's deadline (None: an old client, which gives none)
    send_change, receive_change = trio.open_memory_channel[tuple[list[bytes], AdminRequest, float | None]](
        MAX_IN_FLIGHT)
    in_flight = 0

    def reply(envelope: list[bytes], answer: AdminReply) -> None:
        pumped.send([*envelope, encode_reply(answer)])

    async def respond(envelope: list[bytes], request: AdminRequest) -> None:
        nonlocal in_flight
        try:
            answered = await answer(handler, request)
        finally:
            in_flight -= 1
        reply(envelope, answered)

    async def run_changes() -> None:
        nonlocal in_flight
        async for envelope, request, deadline in receive_change:
            if deadline is not None and trio.current_time() >= deadline:
                in_flight -= 1
                reply(envelope, AdminReply(ok=False, error=late(request)))
                continue
            await respond(envelope, time_left(request, deadline))

    async with trio.open_nursery() as nursery:

        def on_message(frames: list[bytes]) -> None:
            nonlocal in_flight
            if len(frames) < 2:
                return  # not from a peer we can answer
            envelope, payload = frames[:-1], frames[-1]
            if len(envelope) > MAX_ENVELOPE_FRAMES or sum(map(len, envelope)) > MAX_ENVELOPE_BYTES:
                return
            try:
                request = decode_request(payload)
            except AdminProtocolError as e:
                reply(envelope, AdminReply(ok=False, error=str(e)))
                return
            if in_flight >= MAX_IN_FLIGHT:
                reply(envelope, AdminReply(ok=False, error=f"busy: {in_flight} admin requests are being answered; "
                                                           "try again"))
                return
            in_flight += 1
            if changes_state(request):
                deadline = None if request.timeout_ms is None else trio.current_time() + request.timeout_ms / 1000
                send_change.send_nowait((envelope, request, deadline))  # (never full: at most MAX_IN_FLIGHT)
            else:
                nursery.start_soon(respond, envelope, request)

        pumped = PumpedSocket(sock, on_message)
        nursery.start_soon(run_changes)
        task_status.started()
        await pumped.run()
