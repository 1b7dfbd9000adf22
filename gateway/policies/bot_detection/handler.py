"""Kong's bot-detection (kong/plugins/bot-detection/handler.lua): the User-Agent (stripped) is let through when an
`allow` regex finds it, refused 403 when a `deny` regex or one of Kong's bot patterns (rules.py) does. No User-Agent
passes; two of them get 400 "Only one User-Agent header allowed". Like Kong's kong.request.get_headers(), only the
first MAX_REQ_HEADERS (100) header lines are read. Verdicts are cached per User-Agent (10,000).

Kong matches with ngx.re.find "jo", and so does this, on PCRE2 (gateway.policies.pcre2): over the User-Agent's bytes,
without UTF, under Kong's match limit. A regex that fails (the match limit reached) finds nothing, as Kong's
`if re_find(...)` reads its nil; kong.tools.string.strip removes spaces and bytes 9-13 only (STRIP)."""

from __future__ import annotations

from functools import cache

from gateway.http.server import Exchange
from gateway.memo import Memo
from gateway.policies.bot_detection.rules import BOTS
from gateway.policies.bot_detection.schema import BotDetectionConfig
from gateway.policies.pcre2 import PcreMatchError, Regex
from gateway.routing.router import MAX_REQ_HEADERS  # lua_max_req_headers, the lines get_headers() reads

CACHE_SIZE = 10000
# Kong's generic patterns (`[Bb]ot`, `[Ss]pider`, `[Cc]rawl[a-z]{0,50}` after up to 50 name characters, ...) can only
# find a User-Agent that holds one of these words, in some case. They are about 11 of the 26 µs all the patterns
# take for a browser's User-Agent, and 140 ms for 60 KB of spaces, so the words are looked for first.
GENERIC_WORDS = (b"archiver", b"indexer", b"scrape", b"bot", b"spider", b"crawl")
_GENERIC = ("[Cc]rawl", "[Cc][Rr][Aa][Ww][Ll]")
STRIP = b" \t\n\v\f\r"  # kong.tools.string.strip: space and bytes 9-13


@cache
def bot_rules() -> tuple[tuple[Regex, ...], tuple[Regex, ...]]:
    """Kong's bot patterns compiled once per process (at the first bot-detection built): the specific ones, and the
    generic ones run only for an agent holding one of GENERIC_WORDS."""
    return (tuple(Regex(r) for r in BOTS if not any(g in r for g in _GENERIC)),
            tuple(Regex(r) for r in BOTS if any(g in r for g in _GENERIC)))


def finds(rules: tuple[Regex, ...] | list[Regex], agent: bytes) -> bool:
    """Whether one of `rules` finds `agent`; one that fails finds nothing (Kong's `if re_find(...) then`)."""
    for rule in rules:
        try:
            if rule.search(agent):
                return True
        except PcreMatchError:
            pass
    return False


class BotDetection:
    name = "bot-detection"
    priority = 2500  # Kong's

    def __init__(self, config: BotDetectionConfig) -> None:
        self.allow = [Regex(r) for r in config.allow]
        self.deny = [Regex(r) for r in config.deny]
        self.bots, self.generic_bots = bot_rules()
        self.cache: Memo[bytes, bool] = Memo(CACHE_SIZE)  # User-Agent -> refused

    def refused(self, agent: bytes) -> bool:
        agent = agent.strip(STRIP)
        if finds(self.allow, agent):
            return False
        if finds(self.deny, agent) or finds(self.bots, agent):
            return True
        lower = agent.lower()
        return any(w in lower for w in GENERIC_WORDS) and finds(self.generic_bots, agent)

    async def access(self, ex: Exchange) -> bool:
        agent = None
        headers = ex.request.headers
        if len(headers) > MAX_REQ_HEADERS:  # a User-Agent after them is not seen: the request passes
            headers = headers[:MAX_REQ_HEADERS]
        for name, value in headers:
            if name == b"user-agent":
                if agent is not None:
                    await ex.respond_error(400, "Only one User-Agent header allowed")
                    return True
                agent = value
        if agent is None:
            return False
        verdict = self.cache.get(agent)
        if verdict is None:
            verdict = self.cache.keep(agent, self.refused(agent))
        if verdict:
            await ex.respond_error(403)
            return True
        return False
