"""Choosing a codec by name: `auto` means the fastest one installed."""

from __future__ import annotations

from gateway.http.codec import ClientCodec, ServerCodec


def codec_names() -> list[str]:
    """Installed codecs, fastest first."""
    try:
        import httptools  # noqa: F401
    except ImportError:  # pragma: no cover - a dependency, but a broken wheel must not stop the gateway
        return ["h11"]
    return ["llhttp", "h11"]


def resolve_codec(name: str) -> str:
    """'auto' -> the fastest installed codec; a named codec must be installed."""
    available = codec_names()
    if name == "auto":
        return available[0]
    if name not in available:
        raise ValueError(f"http_codec {name!r} is not installed; available: {', '.join(available)}")
    return name


def codec_classes(name: str) -> tuple[type[ServerCodec], type[ClientCodec]]:
    """The (server side, client side) codec classes for a codec name (after `resolve_codec`)."""
    if resolve_codec(name) == "llhttp":
        from gateway.http.codec_llhttp import LlhttpClient, LlhttpServer

        return LlhttpServer, LlhttpClient
    from gateway.http.codec_h11 import H11Client, H11Server

    return H11Server, H11Client
