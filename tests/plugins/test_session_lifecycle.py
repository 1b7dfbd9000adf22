"""The session plugin's sans-I/O parts: the sealed cookie (gateway.policies.session.seal) and a session's life
(gateway.policies.session.lifecycle) with a clock value passed in, no sockets; the config schema's shorthands."""

from __future__ import annotations

from types import SimpleNamespace

import msgspec
import pytest

from gateway.policies.session import seal
from gateway.policies.session.handler import SessionPolicy
from gateway.policies.session.lifecycle import Session, Settings, cookie_flags, lua_number
from gateway.policies.session.schema import SessionConfig

SECRET = "a-long-random-session-secret-for-the-tests"
T0 = 1_800_000_000
DATA = ["consumer-id", "credential-id"]


def settings(**config: object) -> Settings:
    return Settings(msgspec.convert({"secret": SECRET, **config}, SessionConfig))


class Browser:
    """A cookie jar that takes Set-Cookie lines (an expired cookie leaves it)."""

    def __init__(self) -> None:
        self.jar: dict[str, str] = {}

    def take(self, session: Session) -> None:
        for name, line in session.set_cookies.items():
            value = line.split(";", 1)[0].split("=", 1)[1]
            if "Max-Age=0" in line:
                self.jar.pop(name, None)
            else:
                self.jar[name] = value

    def session(self, s: Settings) -> Session:
        return Session(s, self.jar.get)


def saved(s: Settings, data: list = DATA, now: int = T0, browser: Browser | None = None) -> Browser:
    browser = browser or Browser()
    session = browser.session(s)
    session.open(now)
    session.set_data(data)
    session.set_subject("coop")
    assert session.save(now) is None
    browser.take(session)
    return browser


def opened(s: Settings, browser: Browser, now: int) -> tuple[Session, str | None]:
    session = browser.session(s)
    return session, session.open(now)


# --- the seal -----------------------------------------------------------------------------------------------------


def test_a_saved_session_opens_with_its_data_audience_and_subject():
    s = settings()
    session, err = opened(s, saved(s), T0 + 1)
    assert err is None
    assert (session.get_data(), session.data[session.index][1:]) == (DATA, ["default", "coop"])


def test_a_cookie_sent_again_is_not_decrypted_again(monkeypatch):
    s = settings()
    browser = saved(s)
    calls: list[bytes] = []
    cipher = seal.Keys.cipher
    monkeypatch.setattr(seal.Keys, "cipher",
                        lambda keys, sid, remember: calls.append(sid) or cipher(keys, sid, remember))
    for later in (1, 2, 3):
        session, err = opened(s, browser, T0 + later)
        assert err is None and session.get_data() == DATA
    assert len(calls) == 1


def test_a_remembered_opening_still_meets_the_timeouts():
    s = settings(idling_timeout=10)
    browser = saved(s)
    assert opened(s, browser, T0 + 5)[1] is None
    assert opened(s, browser, T0 + 11)[1] == "session idling timeout exceeded"


def test_the_cookie_value_is_a_110_character_header_then_the_ciphertext():
    s = settings()
    value = saved(s).jar["session"]
    header = seal.Header.parse(value)
    assert header is not None
    assert (header.creation_time, header.rolling_offset, header.idling_offset) == (T0, 0, 0)
    assert len(value) == seal.HEADER_ENCODED_SIZE + header.data_size


def test_every_save_draws_a_new_session_id():
    s = settings()
    first, second = saved(s).jar["session"], saved(s).jar["session"]
    assert first[:60] != second[:60]


@pytest.mark.parametrize("position", [5, 60, 100, 112, -3])
def test_a_changed_character_anywhere_is_no_session(position):
    s = settings()
    browser = saved(s)
    value = browser.jar["session"]
    i = position % len(value)
    browser.jar["session"] = value[:i] + ("A" if value[i] != "A" else "B") + value[i + 1:]
    assert opened(s, browser, T0)[1] is not None


def test_a_different_secret_is_no_session():
    browser = saved(settings())
    assert opened(settings(secret="another-secret"), browser, T0)[1] == \
        "invalid session message authentication code"


def test_garbage_is_no_session():
    s = settings()
    browser = Browser()
    for value in ["", "x", "!" * 200, "A" * 110, "A" * 300]:
        browser.jar["session"] = value
        assert opened(s, browser, T0)[1] is not None


def test_the_remember_cookie_key_is_not_the_session_key():
    s = settings(remember=True)
    browser = saved(s)
    browser.jar["session"] = browser.jar["remember"]
    del browser.jar["remember"]
    assert opened(settings(), browser, T0)[1] == "unable to decrypt session data"


# --- the timeouts -------------------------------------------------------------------------------------------------


def test_idling_timeout_is_inclusive():
    s = settings(idling_timeout=60, rolling_timeout=0)
    browser = saved(s)
    assert opened(s, browser, T0 + 60)[1] is None
    assert opened(s, browser, T0 + 61)[1] == "session idling timeout exceeded"


def test_rolling_timeout_ends_an_unrefreshed_session():
    s = settings(idling_timeout=0, rolling_timeout=100)
    browser = saved(s)
    assert opened(s, browser, T0 + 100)[1] is None
    assert opened(s, browser, T0 + 101)[1] == "session rolling timeout exceeded"


def test_absolute_timeout_ends_a_session_whatever_its_refreshes():
    s = settings(idling_timeout=0, rolling_timeout=40, absolute_timeout=100)
    browser = saved(s)
    for now in (T0 + 31, T0 + 62, T0 + 93):
        session, err = opened(s, browser, now)
        assert err is None
        session.refresh(now)
        browser.take(session)
    assert opened(s, browser, T0 + 101)[1] == "session absolute timeout exceeded"


def test_a_timeout_of_zero_is_off():
    s = settings(idling_timeout=0, rolling_timeout=0, absolute_timeout=0)
    assert opened(s, saved(s), T0 + 10**8)[1] is None


def test_refresh_saves_after_three_quarters_of_rolling_timeout_keeping_the_creation_time():
    s = settings(idling_timeout=0, rolling_timeout=100)
    browser = saved(s)
    session, _ = opened(s, browser, T0 + 75)
    session.refresh(T0 + 75)
    assert session.set_cookies == {}
    session, _ = opened(s, browser, T0 + 76)
    session.refresh(T0 + 76)
    browser.take(session)
    header = seal.Header.parse(browser.jar["session"])
    assert header is not None and (header.creation_time, header.rolling_offset) == (T0, 76)
    assert opened(s, browser, T0 + 176)[1] is None


def test_refresh_touches_after_a_minute_idle():
    s = settings(idling_timeout=100, rolling_timeout=0)
    browser = saved(s)
    session, _ = opened(s, browser, T0 + 60)
    session.refresh(T0 + 60)
    assert session.set_cookies == {}
    session, _ = opened(s, browser, T0 + 61)
    session.refresh(T0 + 61)
    browser.take(session)
    header = seal.Header.parse(browser.jar["session"])
    assert header is not None and header.idling_offset == 61
    assert opened(s, browser, T0 + 161)[1] is None
    assert opened(s, browser, T0 + 162)[1] == "session idling timeout exceeded"


def test_timeout_properties_count_down_from_the_last_save():
    s = settings(idling_timeout=900, rolling_timeout=3600, absolute_timeout=86400)
    session, _ = opened(s, saved(s), T0 + 100)
    assert [session.property(p) for p in ("timeout", "idling-timeout", "rolling-timeout", "absolute-timeout")] \
        == ["800", "800", "3500", "86300"]


def test_a_timeout_property_of_a_timeout_that_is_off_is_absent():
    s = settings(idling_timeout=0)
    session, _ = opened(s, saved(s), T0)
    assert (session.property("idling-timeout"), session.property("timeout")) == (None, "3600")


# --- remember -----------------------------------------------------------------------------------------------------


def test_remember_makes_a_new_session_from_the_remember_cookie():
    s = settings(remember=True, idling_timeout=60, rolling_timeout=0)
    browser = saved(s)
    session, err = opened(s, browser, T0 + 120)
    assert (err, session.get_data()) == (None, DATA)
    browser.take(session)
    header = seal.Header.parse(browser.jar["session"])
    assert header is not None and header.creation_time == T0 + 120
    remember = seal.Header.parse(browser.jar["remember"])
    assert remember is not None and (remember.creation_time, remember.rolling_offset) == (T0, 120)


def test_the_remember_cookie_expires_after_remember_rolling_timeout():
    s = settings(remember=True, remember_rolling_timeout=3600, idling_timeout=60, rolling_timeout=0)
    browser = saved(s)
    assert opened(s, browser, T0 + 3601)[1] == "session idling timeout exceeded"


def test_the_remember_cookie_expires_and_max_age_count_from_its_creation():
    s = settings(remember=True, remember_rolling_timeout=3600)
    session = Browser().session(s)
    session.set_data(DATA)
    session.save(T0)
    assert session.set_cookies["remember"].endswith("; Expires=Fri, 15 Jan 2027 09:00:00 GMT; Max-Age=3600")


# --- audiences ----------------------------------------------------------------------------------------------------


def test_a_cookie_of_another_audience_is_no_session_but_is_kept_by_the_next_save():
    browser = saved(settings(audience="a"))
    b = settings(audience="b")
    session, err = opened(b, browser, T0 + 5)
    assert err == "missing session audience"
    session.set_data(["other", "cred"])
    session.save(T0 + 5)
    browser.take(session)
    assert opened(settings(audience="a"), browser, T0 + 6)[0].get_data() == DATA
    assert opened(b, browser, T0 + 6)[0].get_data() == ["other", "cred"]


def test_logout_of_one_audience_keeps_the_others():
    browser = saved(settings(audience="a"))
    b = settings(audience="b")
    session, _ = opened(b, browser, T0)
    session.set_data(["other", "cred"])
    session.save(T0)
    browser.take(session)
    session, _ = opened(b, browser, T0)
    assert session.logout(T0) is None
    browser.take(session)
    assert opened(b, browser, T0)[1] == "missing session audience"
    assert opened(settings(audience="a"), browser, T0)[1] is None


def test_logout_of_the_only_audience_expires_the_cookie():
    s = settings()
    browser = saved(s)
    session, _ = opened(s, browser, T0)
    session.logout(T0)
    assert session.set_cookies == {"session": "session=; Path=/; SameSite=Strict; Secure; HttpOnly; Expires=Thu, "
                                              "01 Jan 1970 00:00:01 GMT; Max-Age=0"}


# --- chunks -------------------------------------------------------------------------------------------------------


def big_data(groups: int) -> list:
    """Data that does not deflate much: distinct hex group names."""
    return [*DATA, [f"{i:04d}-" + "".join(f"{(i * 7919 + j * 104729) % 65536:04x}" for j in range(12))
                    for i in range(groups)]]


def test_a_session_over_4_kb_is_split_over_numbered_cookies():
    s = settings()
    browser = saved(s, big_data(300))
    assert sorted(browser.jar) == ["session", "session2", "session3", "session4"]
    assert all(len(f"{n}={v}") <= seal.MAX_COOKIE_SIZE for n, v in browser.jar.items())
    assert opened(s, browser, T0)[0].get_data() == big_data(300)


def test_a_missing_chunk_is_no_session():
    s = settings()
    browser = saved(s, big_data(300))
    del browser.jar["session2"]
    assert opened(s, browser, T0)[1] == "missing session cookie chunk"


def test_a_smaller_save_expires_the_chunks_it_no_longer_needs():
    s = settings()
    browser = saved(s, big_data(300))
    session, _ = opened(s, browser, T0)
    session.set_data(DATA)
    session.save(T0)
    assert session.set_cookies["session3"].startswith("session3=; Path=/")
    assert session.set_cookies["session3"].endswith("Max-Age=0")
    browser.take(session)
    assert sorted(browser.jar) == ["session"]


def test_large_compressible_data_is_deflated_into_one_cookie():
    s = settings()
    browser = saved(s, [*DATA, ["group"] * 2000])
    header = seal.Header.parse(browser.jar["session"])
    assert header is not None and header.flags & seal.FLAG_DEFLATE and list(browser.jar) == ["session"]
    assert opened(s, browser, T0)[0].get_data() == [*DATA, ["group"] * 2000]


def test_more_than_nine_cookies_of_data_is_not_saved():
    s = settings()
    session = Browser().session(s)
    session.set_data(big_data(1000))
    assert session.save(T0) == "cookie size limit exceeded"
    assert session.set_cookies == {}


@pytest.mark.parametrize(("data_size", "chunks"), [(0, 1), (4096 - 8 - 110, 1), (4096 - 8 - 110 + 1, 2),
                                                    (36864 - 8 - 110 - 8 * 9, 9),
                                                    (36864 - 8 - 110 - 8 * 9 + 1, None)])
def test_cookie_chunks_count_as_resty_session(data_size, chunks):
    assert seal.cookie_chunks(len("session"), data_size) == chunks


# --- cookie attributes, numbers, the schema -----------------------------------------------------------------------


@pytest.mark.parametrize(("config", "flags"), [
    ({}, "; Path=/; SameSite=Strict; Secure; HttpOnly"),
    ({"cookie_domain": "example.test", "cookie_path": "/a"}, "; Domain=example.test; Path=/a; SameSite=Strict; "
                                                             "Secure; HttpOnly"),
    ({"cookie_domain": "localhost"}, "; Path=/; SameSite=Strict; Secure; HttpOnly"),
    ({"cookie_same_site": "None", "cookie_secure": False}, "; Path=/; SameSite=None; Secure; HttpOnly"),
    ({"cookie_same_site": "Default", "cookie_http_only": False, "cookie_secure": False}, "; Path=/; SameSite=Default"),
])
def test_cookie_attributes_as_resty_session_writes_them(config, flags):
    assert cookie_flags(msgspec.convert({"secret": SECRET, **config}, SessionConfig)) == flags


@pytest.mark.parametrize(("value", "text"), [(900, "900"), (900.0, "900"), (0.5, "0.5"), (-3, "-3")])
def test_numbers_are_written_as_lua_writes_them(value, text):
    assert lua_number(value) == text


def test_kong_2_shorthands_fill_the_fields_they_replace():
    config = msgspec.convert({"secret": SECRET, "cookie_lifetime": 10, "cookie_idletime": None, "cookie_discard": 3,
                              "cookie_samesite": "off", "cookie_httponly": False, "cookie_persistent": True,
                              "cookie_renew": 5, "rolling_timeout": 99}, SessionConfig)
    assert (config.rolling_timeout, config.idling_timeout, config.stale_ttl, config.cookie_same_site,
            config.cookie_http_only, config.remember) == (10, 0, 3, "Lax", False, True)


def test_sets_drop_repeated_elements():
    config = msgspec.convert({"secret": SECRET, "logout_methods": ["GET", "GET", "POST"]}, SessionConfig)
    assert config.logout_methods == ["GET", "POST"]


# --- header_filter's cookie merge ---------------------------------------------------------------------------------


def test_a_new_session_cookie_replaces_an_upstream_cookie_of_the_same_name():
    policy = SessionPolicy(msgspec.convert({"secret": SECRET}, SessionConfig), SimpleNamespace(consumers={}))
    who = SimpleNamespace(id="consumer-id", credential_id="credential-id", username="coop", custom_id=None)
    ex = SimpleNamespace(state=None, consumer=who, request=SimpleNamespace(headers=[]))
    headers = [(b"set-cookie", b"other=1"), (b"set-cookie", b"session=upstream")]
    out = policy.header_filter(ex, 200, headers)  # type: ignore[arg-type]
    assert [v.split(b"=")[0] for n, v in out if n == b"set-cookie"] == [b"other", b"session"]
    assert not any(v == b"session=upstream" for _, v in out)
