"""Kong's bot-detection (kong/plugins/bot-detection/handler.lua): the User-Agent (stripped) is let through when an
`allow` regex finds it, refused 403 when a `deny` regex or one of Kong's bot patterns (rules.py) does. No User-Agent
passes; two of them get 400 "Only one User-Agent header allowed". Verdicts are cached per User-Agent (10,000).

Kong matches with ngx.re.find "jo": PCRE over the bytes, without UTF, so every regex is compiled with re.ASCII (\\w,
\\d, \\s, \\b of ASCII only) over the User-Agent decoded as latin-1; kong.tools.string.strip removes spaces and
bytes 9-13 only (STRIP)."""

from __future__ import annotations

import re

from gateway.http.server import Exchange
from gateway.memo import Memo
from gateway.policies.bot_detection.rules import BOTS
from gateway.policies.bot_detection.schema import BotDetectionConfig

CACHE_SIZE = 10000
# Kong's generic patterns (`[Bb]ot`, `[Ss]pider`, `[Cc]rawl[a-z]{0,50}` after up to 50 name characters, ...) can only
# find a User-Agent that holds one of these words, in some case. Their bounded repeats cost about 25 µs each for a
# browser's User-Agent and 0.1-0.5 s for 16-60 KB of spaces, so the words are looked for first.
GENERIC_WORDS = ("archiver", "indexer", "scrape", "bot", "spider", "crawl")
_GENERIC = ("[Cc]rawl", "[Cc][Rr][Aa][Ww][Ll]")
_BOTS = [re.compile(r, re.ASCII) for r in BOTS if not any(g in r for g in _GENERIC)]
_GENERIC_BOTS = [re.compile(r, re.ASCII) for r in BOTS if any(g in r for g in _GENERIC)]
STRIP = " \t\n\v\f\r"  # kong.tools.string.strip: space and bytes 9-13


class BotDetection:
    name = "bot-detection"
    priority = 2500  # Kong's

    def __init__(self, config: BotDetectionConfig) -> None:
        self.allow = [re.compile(r, re.ASCII) for r in config.allow]
        self.deny = [re.compile(r, re.ASCII) for r in config.deny]
        self.cache: Memo[bytes, bool] = Memo(CACHE_SIZE)  # User-Agent -> refused

    def refused(self, agent: str) -> bool:
        agent = agent.strip(STRIP)
        if any(r.search(agent) for r in self.allow):
            return False
        if any(r.search(agent) for r in self.deny) or any(r.search(agent) for r in _BOTS):
            return True
        lower = agent.lower()
        return any(w in lower for w in GENERIC_WORDS) and any(r.search(agent) for r in _GENERIC_BOTS)

    async def access(self, ex: Exchange) -> bool:
        agent = None
        for name, value in ex.request.headers:
            if name == b"user-agent":
                if agent is not None:
                    await ex.respond_error(400, "Only one User-Agent header allowed")
                    return True
                agent = value
        if agent is None:
            return False
        verdict = self.cache.get(agent)
        if verdict is None:
            verdict = self.cache.keep(agent, self.refused(agent.decode("latin-1")))
        if verdict:
            await ex.respond_error(403)
            return True
        return False
