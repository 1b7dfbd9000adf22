"""A small OAuth 2.1 authorization server for the end-to-end tests (h11, in the test's nursery), with what an MCP
client's authorization flow needs: RFC 8414 metadata, dynamic client registration (RFC 7591), the authorization
code grant with PKCE (S256) and RFC 8707's `resource` (which becomes the token's `aud`), and the JWKS its RS256
access tokens are signed with. Authorization is granted at once to the user named by a `login` query argument (the
test's redirect handler adds it), with the scopes asked for."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import h11
import jwt
import trio
from backends import _Backend
from oauth_helpers import jwk, signing_key


class AuthServer(_Backend):
    """The issuer is http://127.0.0.1:<port>; `issued` records every token's claims."""

    def __init__(self, kid: str = "as-key", scopes: list[str] | None = None) -> None:
        super().__init__("as")
        self.kid = kid
        self.scopes = scopes or ["mcp:tools", "mcp:admin"]
        self.clients: dict[str, dict[str, Any]] = {}
        self.codes: dict[str, dict[str, Any]] = {}
        self.issued: list[dict[str, Any]] = []
        self.jwks_fetches = 0

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def metadata(self) -> dict[str, Any]:
        base = self.issuer
        return {"issuer": base, "authorization_endpoint": f"{base}/authorize", "token_endpoint": f"{base}/token",
                "registration_endpoint": f"{base}/register", "jwks_uri": f"{base}/jwks",
                "scopes_supported": self.scopes, "response_types_supported": ["code"],
                "grant_types_supported": ["authorization_code"], "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": ["none"]}

    def mint(self, sub: str, aud: str, scope: str = "", lifetime: int = 300) -> str:
        now = int(time.time())
        claims = {"iss": self.issuer, "sub": sub, "aud": aud, "scope": scope, "iat": now, "exp": now + lifetime}
        self.issued.append(claims)
        return jwt.encode(claims, signing_key(self.kid), algorithm="RS256", headers={"kid": self.kid})

    async def handle_conn(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            seen = await self._read_request(stream, conn)
            if seen is None:
                return
            url = urlsplit(seen.target)
            status, headers, body = self._route(seen.method, url.path, parse_qs(url.query), seen.body)
            headers = [*headers, ("content-length", str(len(body)))]
            await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers))
                                  + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    def _route(self, method: str, path: str, query: dict[str, list[str]],
               body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        json_type = [("content-type", "application/json")]
        if path == "/.well-known/oauth-authorization-server":
            return 200, json_type, json.dumps(self.metadata()).encode()
        if path == "/jwks":
            self.jwks_fetches += 1
            return 200, json_type, json.dumps({"keys": [jwk(self.kid)]}).encode()
        if path == "/register" and method == "POST":
            client = json.loads(body)
            client_id = secrets.token_hex(8)
            client.update(client_id=client_id, client_id_issued_at=int(time.time()), token_endpoint_auth_method="none")
            self.clients[client_id] = client
            return 201, json_type, json.dumps(client).encode()
        if path == "/authorize":
            q = {k: v[0] for k, v in query.items()}
            if q.get("client_id") not in self.clients or q.get("code_challenge_method") != "S256":
                return 400, json_type, b'{"error": "invalid_request"}'
            code = secrets.token_urlsafe(16)
            self.codes[code] = q
            location = q["redirect_uri"] + "?" + urlencode({"code": code, "state": q.get("state", "")})
            return 302, [("location", location)], b""
        if path == "/token" and method == "POST":
            form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
            grant = self.codes.pop(form.get("code", ""), None)
            if grant is None or grant["client_id"] != form.get("client_id"):
                return 400, json_type, b'{"error": "invalid_grant"}'
            challenge = base64.urlsafe_b64encode(hashlib.sha256(form["code_verifier"].encode()).digest()).rstrip(b"=")
            if challenge.decode() != grant["code_challenge"]:
                return 400, json_type, b'{"error": "invalid_grant", "error_description": "PKCE"}'
            scope = grant.get("scope", "")
            access = self.mint(grant.get("login", "nobody"), form.get("resource") or grant.get("resource", ""), scope)
            return 200, json_type, json.dumps({"access_token": access, "token_type": "Bearer", "expires_in": 300,
                                               "scope": scope}).encode()
        return 404, json_type, b'{"error": "not found"}'
