"""The demo and admin pages in a real browser (headless Chromium, tests/browser.py) against
a real gateway, and their HTTP side (headers, keys, sessions) with plain requests.

Every page a browser test opens must load without a console error and without a request
to another origin; that is checked when the test closes it.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import re
import signal
import tarfile
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import jwt
import pytest
import requests
from flask import Flask

from browser import CHROMIUM_ARGS, Page
from pushapp.http import pages as pages_module
from pushapp.http import vendor
from pushapp.config import Config
from support import API_KEY, ROOT, Gateway, require_binary, uid, wait_for

XSS = '<img src=x onerror="window.pwned=1">'
SECRET = "a-test-secret-that-is-long-enough-for-hs256"


@pytest.fixture(scope="module")
def site(start_gateway) -> Gateway:
    """A development gateway, as bin/serve starts it: insecure logins, direct chats, the
    demo on by default."""
    return start_gateway(CHAT_FILTER="direct")


@pytest.fixture(scope="module")
def browser() -> Iterator:
    path = require_binary("chromium", "chromium")
    assert vendor.present(), f"{vendor.CLIENT} is missing: run {vendor.FETCH_COMMAND}"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def pages(browser) -> Iterator[Callable[[Gateway], Page]]:
    """Open pages on a gateway; each must have logged no error and fetched nothing from
    another origin by the end of the test."""
    opened: list[Page] = []

    def open_page(gateway: Gateway) -> Page:
        page = Page(browser, gateway.url)
        opened.append(page)
        return page

    yield open_page
    for page in opened:
        page.close()
    for page in opened:
        assert page.errors == [], page.errors
        assert page.foreign_requests() == [], page.foreign_requests()


def demo_login(page: Page, user: str) -> Page:
    """The demo page, logged in as ``user``."""
    page.open("/demo")
    page.tab.fill("#user", user)
    page.tab.click("#login")
    page.tab.wait_for_selector(f"#status.online >> text=logged in as {user}")
    return page


def admin_login(page: Page, key: str = API_KEY) -> Page:
    """The dashboard, its key typed into its form."""
    page.open("/admin")
    page.tab.fill("#key", key)
    page.tab.click("#key-form button")
    page.tab.wait_for_selector("#admin")
    return page


@pytest.mark.browser
def test_two_pages_chat_both_ways_and_the_ack_empties_the_pending_list(site, pages):
    alice, bob = uid("alice"), uid("bob")
    alice_page, bob_page = demo_login(pages(site), alice), demo_login(pages(site), bob)
    alice_tab, bob_tab = alice_page.tab, bob_page.tab
    bob_tab.uncheck("#auto-ack")
    alice_tab.fill("#to", bob)
    alice_tab.fill("#text", "hi bob")
    alice_tab.click("#send")
    alice_tab.wait_for_selector("#conversation li >> text=ack 1")
    pending = bob_tab.wait_for_selector("#pending li")
    assert f"{alice}: hi bob" in pending.inner_text()
    [stored] = site.pending("chat", bob)
    assert stored["text"] == "hi bob"
    assert re.fullmatch(r"\d{13}-\d+", bob_tab.inner_text("#pending li .mid"))
    bob_tab.click("#ack")
    bob_tab.wait_for_selector("#pending li", state="detached")
    assert f"← {alice}: hi bob" in bob_tab.inner_text("#conversation")
    wait_for(lambda: site.pending("chat", bob) == [], what="bob's ack to delete the chat")

    bob_tab.check("#auto-ack")
    bob_tab.fill("#to", alice)
    bob_tab.fill("#text", "hi alice")
    bob_tab.click("#send")
    alice_tab.wait_for_selector(f"#conversation li >> text=← {bob}: hi alice")
    wait_for(lambda: site.pending("chat", alice) == [], what="alice's automatic ack")
    assert alice_tab.inner_text("#pending") == ""
    bob_tab.fill("#api-key", API_KEY)
    bob_tab.wait_for_selector(f"#online li[data-user='{alice}']")
    bob_page.screenshot("demo.png")


@pytest.mark.browser
def test_a_notification_from_the_demo_form_reaches_the_recipients_page(site, pages):
    sender, recipient = uid("ops"), uid("carol")
    sender_tab = demo_login(pages(site), sender).tab
    recipient_tab = demo_login(pages(site), recipient).tab
    sender_tab.fill("#api-key", API_KEY)
    sender_tab.fill("#notify-to", recipient)
    sender_tab.fill("#notify-title", "Your order shipped")
    sender_tab.click("#notify")
    answer = sender_tab.wait_for_selector("#notify-answer >> text=/^200 /").inner_text()
    assert json.loads(answer.partition(" ")[2])["online"] == 1
    delivered = recipient_tab.wait_for_selector("#notifications li")
    assert "Your order shipped" in delivered.inner_text()
    assert "acked" in delivered.inner_text()
    wait_for(lambda: site.pending("notif", recipient) == [], what="the notification's ack")


@pytest.mark.browser
def test_a_chat_written_as_html_is_shown_as_text_and_runs_nothing(site, pages):
    mallory, victim_user = uid("mallory"), uid("victim")
    mallory_tab = demo_login(pages(site), mallory).tab
    victim = demo_login(pages(site), victim_user)
    mallory_tab.fill("#to", victim_user)
    mallory_tab.fill("#text", XSS)
    mallory_tab.click("#send")
    shown = victim.tab.wait_for_selector("#conversation li")
    assert XSS in shown.inner_text()
    for tab in (victim.tab, mallory_tab):
        assert tab.query_selector("#conversation img") is None
        assert tab.evaluate("window.pwned") is None
    assert not [url for url in victim.requests if urlsplit(url).path == "/x"]


@pytest.mark.browser
def test_the_dashboard_counts_a_demo_page_opening_and_closing(start_gateway, pages):
    gateway = start_gateway(CHAT_FILTER="direct")
    admin = admin_login(pages(gateway)).tab
    admin.wait_for_selector("#connections >> text=0")
    visitor = demo_login(pages(gateway), uid("visitor"))
    admin.wait_for_selector("#connections >> text=1")
    assert admin.inner_text("#redis").startswith("ok")
    assert admin.inner_text("#lease") == gateway.node
    assert admin.inner_text("#listeners") == "1 of 1"
    admin.wait_for_selector("#backlog >> text=/^\\d+ · \\d+$/")  # counted by the lease holder
    row = admin.inner_text("#workers tbody tr")
    assert gateway.node in row and "holds it" in row and "subscribed" in row
    assert admin.query_selector_all("#chart polyline")
    visitor.close()
    admin.wait_for_selector("#connections >> text=0")


@pytest.mark.browser
def test_without_a_key_the_admin_page_shows_only_its_key_form(site, pages):
    page = pages(site)
    tab = page.open("/admin")
    assert tab.query_selector("#key-form") is not None
    assert tab.query_selector("#admin") is None and tab.query_selector("#connections") is None
    tab.fill("#key", "not-the-key")
    tab.click("#key-form button")
    assert "wrong API key" in tab.inner_text("#key-error")
    assert tab.query_selector("#admin") is None
    assert "not-the-key" not in tab.url
    status = tab.evaluate("fetch('/api/v1/stats', {headers: {'X-Pushapp-Session': '1'}})"
                          ".then((answer) => answer.status)")
    assert status == 401, "the dashboard's data needs a session"
    # The refused form answers 401, which the browser logs; nothing else may be logged.
    assert [error for error in page.errors if "401" not in error] == []
    page.errors.clear()


@pytest.mark.browser
def test_the_admin_looks_a_user_up_and_drops_their_messages_after_a_confirm(site, pages):
    user = uid("dave")
    online = site.raw()  # logged in, and acks nothing
    online.call("login", {"myAuraId": user, "deviceId": "tablet-7"})
    site.api("POST", "/chats", json={"from": "shop", "to": user, "text": "parcel"})
    wait_for(lambda: site.pending("chat", user), what="the chat to be stored")
    site.api("POST", "/notifications", json={"toWho": [user], "needStore": True, "t": 1})
    wait_for(lambda: site.pending("notif", user), what="the notification to be stored")
    admin_page = admin_login(pages(site))
    admin = admin_page.tab
    admin.fill("#lookup-user", user)
    admin.click("#lookup")
    admin.wait_for_selector("#presence >> text=device tablet-7")
    assert site.node in admin.inner_text("#presence")
    assert admin.inner_text("#pending-counts") == "1 chat, 1 notification"
    rows = admin.inner_text("#pending-last tbody")
    assert "chat" in rows and "notification" in rows
    admin.wait_for_selector("#acks >> text=/\\d/")  # a rate, from two polls
    admin_page.screenshot("admin.png")
    admin.click("#drop")
    assert "Drop the 2 pending messages" in admin.inner_text("#drop-question")
    admin.click("#drop-no")
    assert site.pending("chat", user) != [], "cancel must drop nothing"
    admin.click("#drop")
    admin.click("#drop-yes")
    admin.wait_for_selector("#drop-result >> text=dropped 1 chat and 1 notification")
    assert site.pending("chat", user) == [] and site.pending("notif", user) == []
    admin.wait_for_selector("#pending-counts >> text=0 chat, 0 notification")
    online.close()


@pytest.mark.browser
def test_the_demo_page_reconnects_and_logs_in_again_when_the_workers_restart(start_gateway,
                                                                              pages):
    gateway = start_gateway(CHAT_FILTER="direct", DRAIN_WINDOW=0.5)
    user = uid("eve")
    page = demo_login(pages(gateway), user)
    tab = page.tab
    old = gateway.node
    gateway.process.send_signal(signal.SIGHUP)  # gunicorn replaces its workers
    tab.wait_for_selector("#log li >> text=disconnected")
    tab.wait_for_selector(f"#status.online >> text=logged in as {user}", timeout=30_000)
    wait_for(lambda: (gateway.presence(user) or [old])[0] != old, what="a login on a new worker")
    gateway.publish("snschat", {"from": "bob", "to": user, "text": "after the restart"})
    tab.wait_for_selector("#conversation li >> text=after the restart")
    # A stopping worker answers new sessions, and requests of a session the worker that
    # replaces it opened, 503 (docs/protocol.md), which the browser logs while the client
    # retries (a websocket upgrade so refused: the client stays on long-polling); nothing
    # else may be logged.
    page.errors[:] = [error for error in page.errors
                      if "status of 503" not in error and "response code: 503" not in error]


@pytest.mark.browser
def test_with_jwt_the_demo_asks_for_a_token(start_gateway, pages):
    gateway = start_gateway(AUTH_MODE="jwt", JWT_SECRET=SECRET, DEMO=1)
    user = uid("frank")
    tab = pages(gateway).open("/demo")
    assert tab.query_selector("#user") is None
    token = jwt.encode({"sub": user, "exp": 2**31 - 1}, SECRET, algorithm="HS256")
    tab.fill("#token", token)
    tab.click("#login")
    tab.wait_for_selector(f"#status.online >> text=logged in as {user}")
    assert gateway.presence(user)[2] == "browser"


def test_the_demo_is_off_in_production_and_the_root_points_to_the_docs(start_gateway):
    gateway = start_gateway(AUTH_MODE="jwt", JWT_SECRET=SECRET)
    assert requests.get(gateway.url + "/demo", timeout=10).status_code == 404
    root = requests.get(gateway.url + "/", timeout=10, allow_redirects=False)
    assert root.status_code == 200
    assert "/admin" in root.text and "docs/" in root.text and 'href="/demo"' not in root.text
    off = start_gateway(DEMO=0)
    assert requests.get(off.url + "/demo", timeout=10).status_code == 404


def test_in_development_the_root_leads_to_the_demo(site):
    root = requests.get(site.url + "/", timeout=10, allow_redirects=False)
    assert root.status_code == 302 and root.headers["Location"] == "/demo"


@pytest.mark.parametrize("path", ["/", "/demo", "/admin", "/static/demo.js"])
def test_the_pages_forbid_inline_script_and_other_origins(site, path):
    answer = requests.get(site.url + path, timeout=10)
    assert answer.status_code == 200, path
    policy = dict(part.strip().split(" ", 1) for part in
                  answer.headers["Content-Security-Policy"].split(";"))
    assert policy["default-src"] == "'none'"
    assert policy["script-src"] == "'self'" and policy["connect-src"] == "'self'"
    assert policy["frame-ancestors"] == "'none'"
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    if path != "/static/demo.js":
        assert re.search(r"<script(?![^>]*\ssrc=)", answer.text) is None, "inline script"
        assert re.search(r"<[^>]+\son\w+=", answer.text) is None, "inline handler"


def test_the_admin_data_needs_the_key_or_its_session(site):
    stats = requests.get(site.url + "/api/v1/stats", timeout=10)
    assert stats.status_code == 401
    assert requests.get(site.url + "/api/v1/stats", timeout=10,
                        headers={"X-Pushapp-Session": "1"}).status_code == 401
    assert site.api("GET", "/stats").status_code == 200
    session = requests.Session()
    answer = session.post(site.url + "/admin/login", data={"key": API_KEY}, timeout=10,
                          allow_redirects=False)
    assert answer.status_code == 303 and answer.headers["Location"] == "/admin"
    cookie = answer.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert API_KEY not in cookie and API_KEY not in base64.b64decode(
        cookie.split("=", 1)[1].split(".")[0] + "==", altchars=b"-_").decode(errors="replace")
    assert session.get(site.url + "/api/v1/stats", timeout=10).status_code == 401, \
        "the session alone, without the page's header, opens nothing"
    with_header = session.get(site.url + "/api/v1/stats", timeout=10,
                              headers={"X-Pushapp-Session": "1"})
    assert with_header.status_code == 200
    assert with_header.json()["workers"][0]["node"] == site.node
    assert "Dashboard" in session.get(site.url + "/admin", timeout=10).text
    session.post(site.url + "/admin/logout", timeout=10)
    assert session.get(site.url + "/api/v1/stats", timeout=10,
                       headers={"X-Pushapp-Session": "1"}).status_code == 401


def test_wrong_keys_are_limited_at_the_api_and_the_admin_form(start_gateway):
    gateway = start_gateway()
    for _ in range(15):
        assert requests.get(gateway.url + "/api/v1/stats", timeout=10).status_code == 401, \
            "a missing key is no guess"
    # The tests' loopback is a trusted proxy (FORWARDED_ALLOW_IPS): it names the client.
    guesser = {"X-Forwarded-For": "203.0.113.7"}
    for attempt in range(10):
        answer = requests.post(gateway.url + "/admin/login", data={"key": f"guess-{attempt}"},
                               headers=guesser, timeout=10)
        assert answer.status_code == 401, attempt
    limited = gateway.api("GET", "/stats", headers=guesser)
    assert limited.status_code == 429, "refused, even with the right key"
    assert 1 <= int(limited.headers["Retry-After"]) <= 6
    form = requests.post(gateway.url + "/admin/login", data={"key": API_KEY}, headers=guesser,
                         timeout=10)
    assert form.status_code == 429 and "too many wrong API keys" in form.text
    assert requests.get(gateway.url + "/api/v1/stats", headers=guesser,
                        timeout=10).status_code == 429
    assert gateway.api("GET", "/stats", headers={"X-Forwarded-For": "203.0.113.8"}
                       ).status_code == 200, "another client is not held up"
    assert gateway.api("GET", "/stats").status_code == 200


def test_without_its_client_the_demo_says_what_to_run(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(vendor, "CLIENT", tmp_path / "socket.io-4.8.4.min.js")
    app = Flask("pages", static_folder=None)
    with caplog.at_level(logging.WARNING):
        pages_module.init_app(app, Config(auth_mode="insecure"))
    assert f"{vendor.CLIENT} is missing; run bin/setup" in caplog.text
    page = app.test_client().get("/demo").text
    missing = re.search(r'<p class="problem" id="client-missing">([^<]*)</p>', page)
    assert missing and "bin/setup" in missing.group(1), page
    assert "/static/vendor/" not in page


def test_the_http_doc_lists_every_page_route():
    app = Flask("routes", static_folder=None)
    app.register_blueprint(pages_module.bp)
    listed = (ROOT / "docs" / "http-api.md").read_text()
    routes = [f"`{method} {re.sub(r'<[^>]+>', '…', rule.rule)}`"
              for rule in app.url_map.iter_rules() for method in rule.methods
              if method in ("GET", "POST")]
    assert len(routes) == 6
    assert [route for route in routes if route not in listed] == []


def test_the_pinned_client_is_the_one_the_js_tests_lock():
    lock = json.loads((ROOT / "tests" / "js" / "package-lock.json").read_text())
    locked = lock["packages"]["node_modules/socket.io-client"]
    assert (locked["version"], locked["integrity"]) == (vendor.VERSION, vendor.INTEGRITY)
    assert vendor.TARBALL.endswith(f"socket.io-client-{vendor.VERSION}.tgz")


def test_a_tarball_that_is_not_the_pinned_one_is_refused():
    payload = io.BytesIO()
    with tarfile.open(fileobj=payload, mode="w:gz") as archive:
        data = b"window.io = function () {};"
        member = tarfile.TarInfo(vendor.MEMBER)
        member.size = len(data)
        archive.addfile(member, io.BytesIO(data))
    with pytest.raises(vendor.VendorError, match="integrity"):
        vendor.extract(payload.getvalue())
    assert vendor.integrity_of(b"x") == "sha512-" + base64.b64encode(
        hashlib.sha512(b"x").digest()).decode()
