"""The dashboard (SPEC §8, §9, issue 18) in a real headless Chromium against the real gateway under gunicorn.

Records are made by real calls through the gateway to the fake upstream (a Claude-Code-shaped session
too); only a 210-turn session, for paging, is written with the store. The browser is Debian's
``chromium`` driven over the DevTools protocol (tests/cdp.py), its tabs in the Europe/Berlin time zone
(so a time shown in UTC by mistake is caught). Every view is saved as a 1440x900 screenshot under
test-artifacts/dashboard/ for a person to look at.
"""

from __future__ import annotations

import json
import math
import os
import re
import sqlite3
import time
import uuid
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal
from zoneinfo import ZoneInfo

import pytest
import requests

from bridge.model_names import model_family
from bridge.store import RecordBatch, open_store
from bridge.timestamps import format_timestamp
from tests.cdp import CHROMIUM, Browser, Page
from tests.conftest import start_logged_gateway
from tests.harness import REPO, wait_for_records
from tests.sdk_calls import _split_kwargs, anthropic_client, load_fixtures, openai_client

ARTIFACTS = REPO / "test-artifacts" / "dashboard"
STATIC = REPO / "bridge" / "dashboard" / "static"
USAGE = "/api/v2/aibridge/usage"
INTERCEPTIONS = "/api/v2/aibridge/interceptions"
SESSIONS = "/api/v2/aibridge/sessions"
ME = "/api/v2/users/me"
USERS = "/api/v2/users"
MODELS = "/api/v2/aibridge/models"
VIEWER_ZONE = "Europe/Berlin"
WINDOW = (1440, 900)
LEADERBOARD_PAGE = 25
#: The leaderboard's sort links (URL value) and the usage figure each sorts by.
SORTS = {"requests": ("interceptions",), "input": ("input_tokens",), "output": ("output_tokens",),
         "cache_read": ("cache_read_input_tokens",), "cache_write": ("cache_write_input_tokens",),
         "total": ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_write_input_tokens")}
XSS_PROMPT = '<img src=x onerror="window.__xss = 1; alert(1)"> is <b id="xss-bold">this</b> bold? <script>window.__xss = 2</script>'
#: A session id a client chose: markup, and the characters an address gives a meaning (/ ? # % &).
HOSTILE_SESSION = '<img src=x onerror="window.__xss = 3"> ../?thread=x#/overview %E0%A4 & <b id="xss-bold">id</b>'
FILTER_MODEL = "claude-dashboard-filter-test"
TOTAL_KEYS = ("interceptions", "input_tokens", "output_tokens", "cache_read_input_tokens", "cache_write_input_tokens")
STABLE_WAIT = 20.0
# The app sets main[data-rendered] to the hash whose view has finished rendering.
RENDERED = "document.getElementById('main').dataset.rendered === location.hash"


def _anthropic_call(gateway, token: str, fixture: str, **overrides) -> str:
    request = {**dict(load_fixtures("anthropic"))[f"anthropic/{fixture}"]["request"], **overrides}
    client = anthropic_client(gateway.base("anthropic"), token, f"anthropic/{fixture}")
    raw = client.messages.with_raw_response.create(**_split_kwargs(client.messages.create, request))
    return raw.headers["X-AIBridge-Interception-Id"]


def _openai_call(gateway, token: str, fixture: str) -> str:
    request = dict(load_fixtures("openai_chat"))[f"openai_chat/{fixture}"]["request"]
    client = openai_client(f"{gateway.base('openai')}/v1", token, f"openai_chat/{fixture}")
    raw = client.chat.completions.with_raw_response.create(**_split_kwargs(client.chat.completions.create, request))
    return raw.headers["X-AIBridge-Interception-Id"]


@pytest.fixture(scope="module")
def seeded(gateway, identities, database) -> dict:
    """Calls through the gateway: a tool call and the turn answering it (a thread), thinking, cache
    tokens, a prompt that looks like HTML, an OpenAI tool call, and three calls with a model of their own."""
    alice, bob = identities.alice, identities.bob
    ids = {
        "tool_use": _anthropic_call(gateway, alice, "tool_use"),
        "tool_result": _anthropic_call(gateway, alice, "tool_result"),
        "thinking": _anthropic_call(gateway, alice, "thinking"),
        "cached": _anthropic_call(gateway, bob, "cached_tokens"),
        "openai_tool": _openai_call(gateway, bob, "tool_call"),
        "xss": _anthropic_call(gateway, alice, "simple_text", messages=[{"role": "user", "content": XSS_PROMPT}]),
    }
    ids["filtered"] = [_anthropic_call(gateway, bob, "simple_text", model=FILTER_MODEL,
                                       messages=[{"role": "user", "content": f"filter test {n}"}]) for n in range(3)]
    every = [i for value in ids.values() for i in (value if isinstance(value, list) else [value])]
    records = wait_for_records(database, every)
    assert len(records) == len(every), "the seeded calls were not all recorded"
    return {"ids": ids, "records": records}


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium; .ci/run does)")
    chromium = Browser(tmp_path_factory.mktemp("chromium") / "profile", window=WINDOW).start()
    yield chromium
    chromium.close()


def new_tab(browser: Browser, fresh_context: bool = False) -> Page:
    tab = browser.new_page(fresh_context=fresh_context)
    tab.set_timezone(VIEWER_ZONE)
    return tab


@pytest.fixture
def page(browser):
    tab = new_tab(browser)
    yield tab
    assert tab.exceptions == [], f"uncaught errors in the page: {tab.exceptions}"
    tab.close()


def shot(page: Page, name: str) -> None:
    time.sleep(0.3)  # let the last layout settle (fonts, the spinner gone)
    page.screenshot(ARTIFACTS / f"{name}.png")


def open_dashboard(page: Page, gateway) -> None:
    page.navigate(f"{gateway.url}/dashboard/")
    page.evaluate("sessionStorage.clear()")
    page.reload()
    page.wait_for("!!document.querySelector('form[data-form=login] #token')", what="the login form")


def sign_in(page: Page, gateway, token: str) -> None:
    open_dashboard(page, gateway)
    page.type_into("#token", token)
    page.press_enter()


def wait_view(page: Page, condition: str = "true", what: str | None = None):
    """Wait until the view of the current URL has rendered and ``condition`` holds."""
    return page.wait_for(f"({RENDERED}) && ({condition})", what=what or condition)


def login_message(page: Page) -> str:
    return page.wait_for("(document.querySelector('[data-role=login-status] .notice.error') || {}).textContent",
                         what="the login error message")


def api(gateway, token: str, path: str, **params) -> dict:
    response = requests.get(f"{gateway.url}{path}", params=params, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def wait_usage_stable(gateway, token: str, at_least: int) -> None:
    """The usage figures settled (the rollup caught up with the calls just made)."""
    deadline = time.monotonic() + STABLE_WAIT
    previous = None
    while time.monotonic() < deadline:
        totals = api(gateway, token, USAGE, by="user", bucket="hour", since="7d")["totals"]
        if totals == previous and totals["interceptions"] >= at_least:
            return
        previous = totals
        time.sleep(0.5)
    raise AssertionError(f"usage totals did not settle within {STABLE_WAIT}s (last: {previous})")


def check_requests_legend(page: Page, token: str, marker: str) -> None:
    """The requests chart's legend shows the API's series (the biggest ones; the rest summed up as
    "Other (N)") with their totals, for exactly the usage request the page made last."""
    used = page.evaluate("performance.getEntriesByType('resource').map(e => e.name).filter(n => n.includes('/aibridge/usage?'))")
    assert marker in used[-1], used
    usage = requests.get(used[-1], headers={"Authorization": f"Bearer {token}"}, timeout=10).json()
    totals = {}
    for series in usage["series"]:
        label = series["label"] if series["label"] not in (None, "") else "(none)"
        totals[str(label)] = totals.get(str(label), 0) + sum(point["interceptions"] for point in series["points"])
    legend = page.evaluate("[...document.querySelector('.chart-card .legend').children].map(li => "
                           "[li.querySelector('.legend-label').textContent, li.querySelector('.legend-value').textContent])")
    shown = {label: int(value.replace(",", "")) for label, value in legend}
    assert sum(shown.values()) == usage["totals"]["interceptions"]
    if len(usage["series"]) <= 8:
        assert shown == totals
    else:
        assert len(legend) == 8 and legend[-1][0] == f"Other ({len(usage['series']) - 7})"
        assert all(totals[label] == value for label, value in list(shown.items())[:7])
        biggest = list(shown.values())[:7]
        assert sorted(biggest, reverse=True) == biggest
        assert sorted(totals.values(), reverse=True)[:7] == biggest


def choose(page: Page, name: str, value: str) -> None:
    """Set a filter of the list form, whether it is a pick list or (its values unknown) a text input."""
    selector = f"form[data-form=filters] [name={name}]"
    tag = page.wait_for(f"document.querySelector({json.dumps(selector)})?.tagName", what=f"the {name} filter")
    if tag == "SELECT":
        assert page.evaluate(f"[...document.querySelector({json.dumps(selector)}).options].some(o => o.value === {json.dumps(value)})")
        page.evaluate(f"document.querySelector({json.dumps(selector)}).value = {json.dumps(value)}")
    else:
        page.type_into(selector, value)


def signed_in_as(page: Page) -> tuple[str, str]:
    """The header's user name and role, once the header shows them."""
    page.wait_for("!document.getElementById('session').hidden", what="the signed-in header")
    user, role = page.evaluate("[document.getElementById('session-user').textContent, document.getElementById('session-role').textContent]")
    return user, role


def time_titles(page: Page) -> list[str]:
    """The titles of every table column, filter field and detail field that holds a time."""
    return page.evaluate("""[...document.querySelectorAll('th, .field-label, .meta-item dt')].map(e => e.textContent)
        .filter(t => /time|started|ended|date/i.test(t))""")


def assert_times_name_their_zone(page: Page) -> None:
    """Every time column and field says it is in the viewer's zone; every chart axis says UTC."""
    for title in time_titles(page):
        assert title.endswith(f"({VIEWER_ZONE})"), title
    charts = page.evaluate("[...document.querySelectorAll('svg.chart-svg')].map(svg => "
                           "[svg.dataset.zone, svg.querySelector('.axis-title')?.textContent])")
    assert all(zone == "UTC" and re.fullmatch(r"(Hour|Day) \(UTC\)", title or "") for zone, title in charts), charts


def in_viewer_zone(shown: str, iso: str) -> bool:
    """Whether ``shown`` (e.g. "27 Nov 2026, 11:02:03") is the stored time ``iso`` on a wall clock in VIEWER_ZONE."""
    at = datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(ZoneInfo(VIEWER_ZONE))
    return shown.startswith(f"{at:%d} ") and f" {at:%Y}, " in shown and shown.endswith(f"{at:%H:%M:%S}")


def visible_rows(page: Page) -> list[dict]:
    return page.evaluate("""[...document.querySelectorAll('table[data-table=interceptions] tbody tr')].map(tr => ({
        id: tr.dataset.id, model: tr.children[3].textContent, user: tr.children[1].textContent }))""")


# -- static serving ----------------------------------------------------------------------------


def test_dashboard_is_served_locally_with_a_strict_policy(gateway):
    redirect = requests.get(f"{gateway.url}/dashboard", allow_redirects=False, timeout=10)
    assert redirect.status_code in (301, 308) and redirect.headers["Location"].endswith("/dashboard/")
    index = requests.get(f"{gateway.url}/dashboard/", timeout=10)
    assert index.status_code == 200 and index.headers["Content-Type"].startswith("text/html")
    policy = index.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy and "unsafe-inline" not in policy
    assets = re.findall(r'(?:src|href)="([^"#]+)"', index.text)
    assert assets and all(asset.startswith("/dashboard/static/") for asset in assets), assets
    for asset in assets:
        response = requests.get(f"{gateway.url}{asset}", timeout=10)
        assert response.status_code == 200, asset
    script = requests.get(f"{gateway.url}/dashboard/static/js/app.js", timeout=10)
    assert script.headers["Content-Type"].startswith("text/javascript")
    assert requests.get(f"{gateway.url}/dashboard/static/../__init__.py", timeout=10).status_code == 404
    # No CDN, no remote font: the only URL in the sources is the SVG namespace.
    for path in STATIC.rglob("*"):
        if path.is_file():
            urls = set(re.findall(r"https?://[^\s\"')]+", path.read_text()))
            assert urls <= {"http://www.w3.org/2000/svg"}, (path, urls)
    # Data never goes through innerHTML / insertAdjacentHTML / document.write.
    for path in STATIC.rglob("*.js"):
        assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write", path.read_text()), path


# -- the browser flows -------------------------------------------------------------------------


def test_users_me_names_the_tokens_user(gateway, identities):
    bob = api(gateway, identities.bob, ME)
    assert {key: bob[key] for key in ("username", "is_admin")} == {"username": "bob", "is_admin": False}
    alice = api(gateway, identities.alice, ME)
    assert {key: alice[key] for key in ("username", "is_admin")} == {"username": "alice", "is_admin": True}
    assert bob["id"] != alice["id"] and {u["username"]: u["id"] for u in api(gateway, identities.alice, USERS)}["bob"] == bob["id"]
    for headers in ({}, {"Authorization": "Bearer not-a-gateway-token"}):
        response = requests.get(f"{gateway.url}{ME}", headers=headers, timeout=10)
        assert response.status_code == 401 and "token" in response.json()["message"]


def test_a_bad_token_is_refused(page, gateway):
    sign_in(page, gateway, "not-a-gateway-token")
    assert "not accepted" in login_message(page)
    assert page.evaluate("sessionStorage.getItem('bridge.dashboard.token')") is None
    assert page.evaluate("document.getElementById('nav').hidden") is True
    shot(page, "login-refused-bad-token")


def test_a_non_admin_signs_in_and_sees_only_their_own_records(page, gateway, identities, seeded):
    ids = seeded["ids"]
    sign_in(page, gateway, identities.bob)
    wait_view(page, "!!document.querySelector('[data-view=overview] svg.chart-svg')", what="bob's overview")
    assert signed_in_as(page) == ("bob", "user")
    assert "your own usage" in page.evaluate("document.querySelector('[data-view=overview] .notice').textContent")
    used = page.evaluate("performance.getEntriesByType('resource').map(e => e.name).filter(n => n.includes('/aibridge/usage?'))")
    shown = page.evaluate("Number(document.querySelector('[data-total=interceptions]').dataset.value)")
    assert shown == api(gateway, identities.bob, used[-1].removeprefix(gateway.url))["totals"]["interceptions"]
    shot(page, "non-admin-overview")

    page.click("#nav a[data-view=interceptions]")
    wait_view(page, "document.querySelectorAll('table[data-table=interceptions] tbody tr').length > 0", what="bob's list")
    own = api(gateway, identities.bob, INTERCEPTIONS, limit=50)["results"]
    rows = visible_rows(page)
    assert [row["id"] for row in rows] == [r["id"] for r in own]
    assert {row["user"] for row in rows} == {"bob"}
    assert {ids["cached"], ids["openai_tool"], *ids["filtered"]} <= {row["id"] for row in rows}
    assert not {ids["tool_use"], ids["tool_result"], ids["thinking"], ids["xss"]} & {row["id"] for row in rows}
    assert page.evaluate("document.querySelector('form[data-form=filters] [name=initiator]')") is None  # no one else to pick
    shot(page, "non-admin-interceptions")

    # Someone else's interception by its address: not found, nothing of it shown.
    page.set_hash(f"#/interceptions/{ids['thinking']}")
    wait_view(page, "!!document.querySelector('[data-view=detail] .notice.error')", what="the refusal of alice's record")
    assert "was not found" in page.evaluate("document.querySelector('[data-view=detail] .notice.error').textContent")
    assert seeded["records"][ids["thinking"]]["model_thoughts"][0]["content"] not in page.evaluate("document.body.innerText")

    page.click("#nav a[data-view=leaderboard]")
    wait_view(page, "!!document.querySelector('table[data-table=leaderboard]')", what="bob's leaderboard")
    assert page.evaluate("[...document.querySelectorAll('table[data-table=leaderboard] tbody tr')].map(tr => tr.dataset.user)") == ["bob"]
    assert "for administrators" in page.evaluate("document.querySelector('[data-view=leaderboard] .notice').textContent")
    shot(page, "non-admin-leaderboard")


def test_admin_signs_in_sees_the_overview_and_signs_out(page, gateway, identities, seeded):
    wait_usage_stable(gateway, identities.alice, at_least=len(seeded["records"]))
    open_dashboard(page, gateway)
    shot(page, "login")
    page.type_into("#token", identities.alice)
    page.press_enter()
    wait_view(page, "document.querySelectorAll('[data-view=overview] svg.chart-svg').length >= 3"
              " && document.querySelectorAll('svg.chart-svg rect.bar').length > 0", what="the overview charts")
    assert page.evaluate("sessionStorage.getItem('bridge.dashboard.token')") == identities.alice
    assert signed_in_as(page) == ("alice", "admin")

    # The totals are the API's, for exactly the request the page made.
    used = page.evaluate("performance.getEntriesByType('resource').map(e => e.name).filter(n => n.includes('/aibridge/usage?'))")
    assert len(used) == 1, used
    expected = requests.get(used[0], headers={"Authorization": f"Bearer {identities.alice}"}, timeout=10).json()["totals"]
    shown = page.evaluate("Object.fromEntries([...document.querySelectorAll('[data-total]')].map(c => "
                          "[c.dataset.total, [Number(c.dataset.value), c.querySelector('.stat-value').textContent]]))")
    assert set(shown) == set(TOTAL_KEYS)
    for key in TOTAL_KEYS:
        assert shown[key][0] == expected[key], key
        assert shown[key][1] == f"{expected[key]:,}", key
    assert expected["interceptions"] >= len(seeded["records"])
    assert expected["cache_read_input_tokens"] >= 12000  # the cached_tokens call

    assert page.evaluate("[...document.querySelectorAll('table[data-table=tools] td')].some(td => td.textContent === 'get_weather')")
    check_requests_legend(page, identities.alice, "by=user")
    # Every resource came from the gateway itself.
    origins = page.evaluate("performance.getEntriesByType('resource').map(e => new URL(e.name).origin)")
    assert set(origins) == {gateway.url}
    shot(page, "overview")

    page.click("[data-control=by] a[data-value=model]")
    wait_view(page, "location.hash.includes('by=model')", what="the overview by model")
    check_requests_legend(page, identities.alice, "by=model")
    page.click("[data-control=range] a[data-value='24h']")
    wait_view(page, "location.hash.includes('range=24h') && location.hash.includes('by=model')"
                    " && document.querySelectorAll('svg.chart-svg rect.bar').length > 0", what="the 24h charts by model")
    check_requests_legend(page, identities.alice, "by=model")
    page.click("[data-control=kind] a[data-value=cache_read_input_tokens]")
    wait_view(page, "location.hash.includes('kind=cache_read_input_tokens') && location.hash.includes('range=24h')"
                    " && document.querySelectorAll('svg.chart-svg').length >= 3", what="the cache read chart")
    assert page.evaluate("document.querySelector('[data-control=kind] a.active').dataset.value") == "cache_read_input_tokens"
    shot(page, "overview-by-model-24h")

    page.click("#logout")
    wait_view(page, "!!document.querySelector('form[data-form=login]')", what="the login form after logging out")
    assert page.evaluate("sessionStorage.getItem('bridge.dashboard.token')") is None


def test_list_filters_by_model_and_pages_with_the_cursor(page, gateway, identities, seeded):
    sign_in(page, gateway, identities.alice)
    wait_view(page, "!!document.querySelector('[data-view=overview]')", what="the overview")
    page.click("#nav a[data-view=interceptions]")
    wait_view(page, "document.querySelectorAll('table[data-table=interceptions] tbody tr').length > 0", what="the list")
    page.wait_for("[...document.querySelectorAll('select[name=client] option')].some(o => o.value === 'anthropic-python')",
                  what="the clients in the filter")
    newest = api(gateway, identities.alice, INTERCEPTIONS, limit=1)["results"][0]["id"]
    assert visible_rows(page)[0]["id"] == newest  # newest first
    shot(page, "interceptions")

    choose(page, "model", FILTER_MODEL)
    page.click("form[data-form=filters] button[type=submit]")
    wait_view(page, "location.hash.includes('model=')", what="the filtered list")
    expected = [r["id"] for r in api(gateway, identities.alice, INTERCEPTIONS, q=f"model:{FILTER_MODEL}")["results"]]
    assert sorted(expected) == sorted(seeded["ids"]["filtered"])
    rows = visible_rows(page)
    assert [row["id"] for row in rows] == expected
    assert {row["model"] for row in rows} == {FILTER_MODEL} and {row["user"] for row in rows} == {"bob"}
    assert "of 3 matching" in page.evaluate("document.querySelector('[data-role=count]').textContent")
    shot(page, "interceptions-filtered-by-model")

    # Two per page: "Next page" continues after the last id shown, "Newer" comes back.
    page.set_hash(f"#/interceptions?model={FILTER_MODEL}&limit=2")
    wait_view(page, "location.hash.includes('limit=2')", what="a page of two")
    assert [row["id"] for row in visible_rows(page)] == expected[:2]
    page.click("button[data-page=next]")
    wait_view(page, f"location.hash.includes('cursor={expected[1]}')", what="the second page")
    assert [row["id"] for row in visible_rows(page)] == expected[2:]
    assert page.evaluate("document.querySelector('button[data-page=next]').disabled") is True
    assert "3–3 of 3" in page.evaluate("document.querySelector('[data-role=count]').textContent")
    page.click("button[data-page=newer]")
    wait_view(page, "!location.hash.includes('cursor=')", what="the first page again")
    assert [row["id"] for row in visible_rows(page)] == expected[:2]


def test_detail_shows_prompt_tool_calls_thoughts_and_the_thread(page, gateway, identities, seeded):
    ids, records = seeded["ids"], seeded["records"]
    sign_in(page, gateway, identities.alice)
    wait_view(page, "!!document.querySelector('[data-view=overview]')", what="the overview")
    page.set_hash("#/interceptions?initiator=alice&limit=200")
    wait_view(page, "location.hash.includes('initiator=alice')", what="alice's interceptions")
    row = f"table[data-table=interceptions] tr[data-id='{ids['tool_use']}'] td:nth-child(4)"
    page.click(row)
    wait_view(page, f"document.querySelector('[data-view=detail]')?.dataset.id === '{ids['tool_use']}'", what="the detail view")
    assert page.evaluate("location.hash").startswith(f"#/interceptions/{ids['tool_use']}")
    prompt = page.evaluate("[...document.querySelectorAll('[data-section=prompt] pre')].map(p => p.textContent)")
    assert prompt == ["What's the weather like in San Francisco?"]
    tool = records[ids["tool_use"]]["tool_usages"][0]
    shown = page.evaluate("[...document.querySelectorAll('[data-section=tools] .tool-call')].map(t => ({"
                          "name: t.querySelector('.tool-name').textContent, input: t.querySelector('pre').textContent}))")
    assert shown == [{"name": "get_weather", "input": json.dumps(json.loads(tool["input"]), indent=2)}]
    usage = records[ids["tool_use"]]["token_usages"][0]
    assert page.evaluate("document.querySelector('[data-usage=input_tokens]').dataset.value") == str(usage["input_tokens"])
    # Its tool call is answered by the tool_result turn: the thread links there.
    page.wait_for(f"!!document.querySelector('[data-section=thread] li[data-id=\"{ids['tool_result']}\"] a')",
                  what="the answering interception in the thread")
    shot(page, "detail-tool-call")

    # A fresh tab state (nothing cached) on the answering turn's own URL: the thread is found through the API.
    page.set_hash(f"#/interceptions/{ids['tool_result']}")
    page.reload()
    wait_view(page, f"document.querySelector('[data-view=detail]')?.dataset.id === '{ids['tool_result']}'", what="the tool result turn")
    page.wait_for(f"!!document.querySelector('[data-section=thread] li[data-id=\"{ids['tool_use']}\"] a')",
                  what="the interception whose tool call this one answers")
    link = page.evaluate(f"document.querySelector('[data-section=thread] li[data-id=\"{ids['tool_use']}\"] a').getAttribute('href')")
    assert link.startswith(f"#/interceptions/{ids['tool_use']}")
    assert "tool results" in page.evaluate("document.querySelector('[data-section=prompt]').textContent")
    shot(page, "detail-thread")
    page.click(f"[data-section=thread] li[data-id=\"{ids['tool_use']}\"] a")
    wait_view(page, f"document.querySelector('[data-view=detail]')?.dataset.id === '{ids['tool_use']}'", what="the thread link")

    thought = records[ids["thinking"]]["model_thoughts"][0]
    page.set_hash(f"#/interceptions/{ids['thinking']}")
    wait_view(page, f"document.querySelector('[data-view=detail]')?.dataset.id === '{ids['thinking']}'", what="the thinking turn")
    shown = page.evaluate("[...document.querySelectorAll('[data-section=thoughts] .thought')].map(t => ({"
                          "source: t.querySelector('.badge').textContent, text: t.querySelector('pre').textContent}))")
    assert shown == [{"source": "thinking", "text": thought["content"]}]
    shot(page, "detail-thoughts")


def test_a_prompt_with_html_is_shown_as_text(page, gateway, identities, seeded):
    xss = seeded["ids"]["xss"]
    sign_in(page, gateway, identities.alice)
    wait_view(page, "!!document.querySelector('[data-view=overview]')", what="the overview")
    page.set_hash("#/interceptions?initiator=alice&limit=200")
    wait_view(page, f"!!document.querySelector('tr[data-id=\"{xss}\"]')", what="the row with the HTML prompt")
    assert page.evaluate(f"document.querySelector('tr[data-id=\"{xss}\"] .prompt-cell').textContent").startswith("<img src=x")
    page.click(f"tr[data-id=\"{xss}\"] td:nth-child(4)")
    wait_view(page, f"document.querySelector('[data-view=detail]')?.dataset.id === '{xss}'", what="the detail view")
    assert page.evaluate("document.querySelector('[data-section=prompt] pre').textContent") == XSS_PROMPT
    time.sleep(0.5)  # an onerror would fire once the image failed to load
    assert page.evaluate("document.querySelectorAll('img, script:not([src]), #xss-bold').length") == 0
    assert page.evaluate("typeof window.__xss") == "undefined"
    assert page.dialogs == []
    shot(page, "detail-html-prompt")

    # Its own URL (the id alone), opened afresh: one query by id finds it.
    assert page.evaluate("location.hash") == f"#/interceptions/{xss}"
    page.reload()
    wait_view(page, f"document.querySelector('[data-view=detail]')?.dataset.id === '{xss}'", what="the detail view after a reload")
    assert page.evaluate("document.querySelector('[data-section=prompt] pre').textContent") == XSS_PROMPT
    queries = page.evaluate("performance.getEntriesByType('resource').map(e => e.name).filter(n => n.includes('/aibridge/interceptions'))")
    assert queries == [f"{gateway.url}{INTERCEPTIONS}/{xss}"], queries
    assert page.evaluate("document.querySelectorAll('img').length") == 0 and page.dialogs == []


def test_a_pasted_deep_link_opens_after_sign_in(browser, gateway, identities, seeded):
    """#/interceptions/ID pasted into a fresh browser (no token, nothing cached): the sign-in form,
    then that interception, with no other parameter needed."""
    target = seeded["ids"]["tool_use"]
    tab = new_tab(browser, fresh_context=True)
    try:
        tab.navigate(f"{gateway.url}/dashboard/#/interceptions/{target}")
        tab.wait_for("!!document.querySelector('form[data-form=login] #token')", what="the login form")
        assert tab.evaluate("sessionStorage.length") == 0
        shot(tab, "deep-link-before-sign-in")
        tab.type_into("#token", identities.alice)
        tab.press_enter()
        wait_view(tab, f"document.querySelector('[data-view=detail]')?.dataset.id === '{target}'", what="the pasted interception")
        assert tab.evaluate("location.hash") == f"#/interceptions/{target}"
        assert tab.evaluate("[...document.querySelectorAll('[data-section=prompt] pre')].map(p => p.textContent)") == [
            "What's the weather like in San Francisco?"]
        assert signed_in_as(tab) == ("alice", "admin")
        shot(tab, "deep-link-after-sign-in")
        assert tab.exceptions == [], tab.exceptions
    finally:
        tab.close()


def test_every_time_column_and_axis_names_its_zone(page, gateway, identities, seeded):
    ids, records = seeded["ids"], seeded["records"]
    sign_in(page, gateway, identities.alice)
    wait_view(page, "document.querySelectorAll('[data-view=overview] svg.chart-svg').length >= 3", what="the overview")
    assert page.evaluate("Intl.DateTimeFormat().resolvedOptions().timeZone") == VIEWER_ZONE
    assert page.evaluate("document.querySelectorAll('svg.chart-svg').length") == 3
    assert_times_name_their_zone(page)
    subtitles = page.evaluate("[...document.querySelectorAll('.chart-card .card-header p')].map(p => p.textContent)")
    assert len(subtitles) == 3 and all("(UTC)" in text for text in subtitles), subtitles

    page.set_hash(f"#/interceptions?initiator=alice&limit=200")
    wait_view(page, f"!!document.querySelector('tr[data-id=\"{ids['thinking']}\"]')", what="alice's interceptions")
    titles = time_titles(page)
    assert f"Started ({VIEWER_ZONE})" in titles and f"Started after ({VIEWER_ZONE})" in titles, titles
    assert_times_name_their_zone(page)
    # The time shown is the viewer's wall clock, not UTC.
    shown = page.evaluate(f"document.querySelector('tr[data-id=\"{ids['thinking']}\"] td').textContent")
    assert in_viewer_zone(shown, records[ids["thinking"]]["started_at"]), shown

    page.set_hash(f"#/interceptions/{ids['tool_use']}")
    wait_view(page, f"document.querySelector('[data-view=detail]')?.dataset.id === '{ids['tool_use']}'", what="the detail view")
    titles = time_titles(page)
    assert f"Started ({VIEWER_ZONE})" in titles and f"Ended ({VIEWER_ZONE})" in titles, titles
    assert_times_name_their_zone(page)
    assert page.evaluate("document.querySelector('[data-section=thread] [data-zone]').textContent") == f"times in {VIEWER_ZONE}"

    page.set_hash("#/leaderboard")
    wait_view(page, "!!document.querySelector('table[data-table=leaderboard]')", what="the leaderboard")
    assert_times_name_their_zone(page)
    assert "UTC hours" in page.evaluate("document.querySelector('[data-view=leaderboard] .toolbar p').textContent")


def test_filters_are_pick_lists_of_what_exists(page, gateway, identities, seeded):
    sign_in(page, gateway, identities.alice)
    wait_view(page, "!!document.querySelector('[data-view=overview]')", what="the overview")
    page.set_hash("#/interceptions")
    options = "[...document.querySelectorAll('form[data-form=filters] select[name={}] option')].map(o => o.value)"
    for name in ("client", "initiator", "provider_name"):
        page.wait_for(f"{options.format(name)}.length > 1", what=f"the {name} pick list")
    clients = api(gateway, identities.alice, "/api/v2/aibridge/clients")
    assert set(page.evaluate(options.format("client"))) == {"", *(name for name in clients if name)}
    assert set(page.evaluate(options.format("initiator"))) == {"", *(u["username"] for u in api(gateway, identities.alice, USERS))}
    providers = api(gateway, identities.alice, USAGE, by="provider", bucket="day", since="90d")["series"]
    assert set(page.evaluate(options.format("provider_name"))) == {"", *(s["key"] for s in providers if s["key"])}
    # Models: a pick list when the gateway lists them, else a text input (and no error either way).
    models = requests.get(f"{gateway.url}{MODELS}", headers={"Authorization": f"Bearer {identities.alice}"}, timeout=10)
    if models.status_code == 200:
        page.wait_for(f"{options.format('model')}.length > 1", what="the model pick list")
        assert set(page.evaluate(options.format("model"))) == {"", *models.json()}
    else:
        assert page.evaluate("document.querySelector('form[data-form=filters] [name=model]').tagName") == "INPUT"
    assert page.evaluate("document.querySelectorAll('.notice.error').length") == 0
    shot(page, "interceptions-pick-lists")

    choose(page, "client", "anthropic-python")
    choose(page, "provider_name", "anthropic")
    page.click("form[data-form=filters] button[type=submit]")
    wait_view(page, "location.hash.includes('client=')", what="the list filtered by client and provider name")
    expected = api(gateway, identities.alice, INTERCEPTIONS, q='client:"anthropic-python" provider_name:anthropic', limit=50)
    assert [row["id"] for row in visible_rows(page)] == [r["id"] for r in expected["results"]] != []
    assert page.evaluate("document.querySelector('select[name=client]').value") == "anthropic-python"


BEDROCK_SONNET = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"


def write_one_model_under_two_names(database) -> None:
    """Two calls of a user of their own: one through Bedrock (its id), one to Anthropic (its alias)."""
    store = open_store(str(database))
    try:
        user = store.identity.get_user("family-user") or store.identity.create_user("family-user")
        at = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=30)
        batch: dict[str, list[dict]] = {"interceptions": [], "token_usages": []}
        for n, (provider_name, model) in enumerate((("bedrock", BEDROCK_SONNET), ("anthropic", "claude-sonnet-4-5"))):
            record_id = str(uuid.uuid4())
            batch["interceptions"].append({
                "id": record_id, "initiator_id": user["id"], "provider": "anthropic", "provider_name": provider_name,
                "model": model, "client": "Claude Code", "client_session_id": f"family-{record_id}", "user_agent": "family/1",
                "credential_kind": "centralized", "credential_hint": None, "correlating_tool_call_id": None,
                "started_at": format_timestamp(at + timedelta(seconds=n)),
                "ended_at": format_timestamp(at + timedelta(seconds=n + 1)), "metadata": {}})
            batch["token_usages"].append({"id": f"tu-{record_id}", "interception_id": record_id, "provider_response_id": None,
                                          "input_tokens": 300, "output_tokens": 30, "cache_read_input_tokens": 0,
                                          "cache_write_input_tokens": 0, "metadata": {}, "created_at": format_timestamp(at)})
        store.records.write_records(RecordBatch.load(batch))
    finally:
        store.close()


def group_rows(page: Page) -> dict[str, int]:
    """The overview's group table: each row's label and requests."""
    return dict(page.evaluate("[...document.querySelectorAll('table[data-table=groups] tbody tr')].map(tr => "
                              "[tr.children[0].textContent, Number(tr.children[1].textContent.replace(/,/g, ''))])"))


def test_grouping_counts_a_bedrock_id_with_its_anthropic_model(page, gateway, identities, seeded, database):
    write_one_model_under_two_names(database)
    wait_usage_stable(gateway, identities.alice, at_least=len(seeded["records"]) + 2)
    sign_in(page, gateway, identities.alice)
    wait_view(page, "!!document.querySelector('[data-view=overview]')", what="the overview")
    page.set_hash("#/overview?range=7d&by=model&kind=all&all=1")
    wait_view(page, "!!document.querySelector('table[data-table=groups]')", what="the by-model table")
    by_model = group_rows(page)
    assert BEDROCK_SONNET in by_model and "claude-sonnet-4-5" in by_model

    page.click("[data-view=overview] [data-role=group-models]")
    wait_view(page, "location.hash.includes('family=1') && !!document.querySelector('table[data-table=groups]')",
              what="the by-model table grouped")
    grouped = group_rows(page)
    assert BEDROCK_SONNET not in grouped
    # one row for the model: its Bedrock id, its alias and its snapshots together
    assert grouped["claude-sonnet-4-5"] == sum(count for name, count in by_model.items()
                                               if model_family(name) == "claude-sonnet-4-5")
    assert grouped["claude-sonnet-4-5"] >= by_model[BEDROCK_SONNET] + by_model["claude-sonnet-4-5"]
    assert sum(grouped.values()) == sum(by_model.values())
    shot(page, "overview-by-model-family")

    # The list's model pick list offers families, and filters by one (model_family:).
    page.set_hash("#/interceptions?family=1")
    page.wait_for("[...document.querySelectorAll('select[name=model_family] option')].some(o => o.value === 'claude-sonnet-4-5')",
                  what="the model families in the filter")
    assert not page.evaluate("[...document.querySelectorAll('select[name=model_family] option')]"
                             f".some(o => o.value === {json.dumps(BEDROCK_SONNET)})")
    assert page.evaluate("document.querySelector('[data-form=filters] [data-role=group-models]').checked") is True
    choose(page, "model_family", "claude-sonnet-4-5")
    page.click("form[data-form=filters] button[type=submit]")
    wait_view(page, "location.hash.includes('model_family=')", what="the list filtered by model family")
    expected = api(gateway, identities.alice, INTERCEPTIONS, q="model_family:claude-sonnet-4-5", limit=50)["results"]
    rows = visible_rows(page)
    assert [row["id"] for row in rows] == [r["id"] for r in expected]
    # Every row is of the family (the page shows the newest; other tests of this gateway add Bedrock ones).
    assert rows and all(model_family(row["model"]) == "claude-sonnet-4-5" for row in rows)


# -- the leaderboard, on a gateway of its own with many users ----------------------------------------

CROWD = 41


@pytest.fixture(scope="module")
def crowd(start_gateway, upstream, tmp_path_factory):
    """A gateway whose store has alice (admin), bob and 41 more users, made through the API, each with
    1 to 3 calls; every seventh also a call with many cache tokens (so the token order is not the
    request order)."""
    logged = start_logged_gateway(start_gateway, upstream, tmp_path_factory.mktemp("leaderboard"))
    gateway, admin = logged.gateway, logged.alice
    headers = {"Authorization": f"Bearer {admin}"}
    calls = 0
    for n in range(CROWD):
        name = f"user{n:02d}"
        assert requests.post(f"{gateway.url}{USERS}", json={"username": name}, headers=headers, timeout=10).status_code == 201
        token = requests.post(f"{gateway.url}{USERS}/{name}/tokens", json={}, headers=headers, timeout=10).json()["token"]
        for _ in range(n % 3 + 1):
            _anthropic_call(gateway, token, "simple_text")
            calls += 1
        if n % 7 == 0:
            _anthropic_call(gateway, token, "cached_tokens")
            calls += 1
    wait_usage_stable(gateway, admin, at_least=calls)
    return logged


def leaderboard_rows(page: Page) -> list[dict]:
    return page.evaluate("""[...document.querySelectorAll('table[data-table=leaderboard] tbody tr')].map(tr => ({
        user: tr.dataset.user, href: tr.querySelector('a').getAttribute('href'),
        values: [...tr.querySelectorAll('td.num')].slice(1).map(td => Number(td.textContent.replace(/,/g, '')))}))""")


def expected_leaderboard(page: Page, gateway, token: str, sort: str) -> list[tuple[str, int]]:
    """Every user (the API's usage by user for the request the page made, and the users without
    usage), most of the figure first, ties by name."""
    used = page.evaluate("performance.getEntriesByType('resource').map(e => e.name).filter(n => n.includes('/aibridge/usage?'))")
    assert "by=user" in used[-1], used
    usage = api(gateway, token, used[-1].removeprefix(gateway.url))
    value = {s["label"]: sum(point[key] for point in s["points"] for key in SORTS[sort]) for s in usage["series"]}
    for user in api(gateway, token, USERS):
        value.setdefault(user["username"], 0)
    return sorted(value.items(), key=lambda item: (-item[1], item[0]))


def walk_leaderboard(page: Page, sort: str) -> list[tuple[str, int]]:
    """Every page of the leaderboard, by its Next links, as (user, value of the sorted column)."""
    column = list(SORTS).index(sort)  # the figures' cells come in SORTS order
    seen: list[tuple[str, int]] = []
    for number in range(1, 10):
        wait_view(page, f"!!document.querySelector('table[data-table=leaderboard]') && location.hash.includes('sort={sort}')",
                  what=f"leaderboard page {number}")
        rows = leaderboard_rows(page)
        assert 0 < len(rows) <= LEADERBOARD_PAGE
        seen += [(row["user"], row["values"][column]) for row in rows]
        if page.evaluate("document.querySelector('[data-page=next]').classList.contains('disabled')"):
            return seen
        assert len(rows) == LEADERBOARD_PAGE
        page.click("[data-page=next]")
        page.wait_for(f"location.hash.includes('page={number + 1}')", what=f"the address of page {number + 1}")
    raise AssertionError("the leaderboard did not end within 9 pages")


def test_the_leaderboard_reaches_every_user_by_paging(page, crowd):
    gateway, admin = crowd.gateway, crowd.alice
    sign_in(page, gateway, admin)
    wait_view(page, "document.querySelectorAll('[data-view=overview] svg.chart-svg').length >= 3", what="the overview")
    # The charts' "Other" users are reachable: the link under the chart opens the leaderboard.
    assert page.evaluate("[...document.querySelectorAll('.chart-card .legend-label')].some(l => l.textContent.startsWith('Other ('))")
    shot(page, "overview-many-users")
    page.click("[data-role=other]")
    wait_view(page, "!!document.querySelector('table[data-table=leaderboard]')", what="the leaderboard from the Other link")
    assert page.evaluate("location.hash") == "#/leaderboard?range=7d"
    shot(page, "leaderboard")

    page.set_hash("#/leaderboard?range=7d&sort=total")
    by_tokens = walk_leaderboard(page, "total")
    expected = expected_leaderboard(page, gateway, admin, "total")
    assert by_tokens == expected and len(expected) == CROWD + 2 > LEADERBOARD_PAGE
    assert "26–43 of 43 users" in page.evaluate("document.querySelector('[data-role=count]').textContent")
    shot(page, "leaderboard-last-page")
    page.click("[data-page=prev]")
    wait_view(page, "location.hash.includes('page=1')", what="the first page again")
    assert [row["user"] for row in leaderboard_rows(page)] == [user for user, _ in expected[:LEADERBOARD_PAGE]]

    page.click("a[data-sort=requests]")
    by_requests = walk_leaderboard(page, "requests")
    assert by_requests == expected_leaderboard(page, gateway, admin, "requests")
    assert [user for user, _ in by_requests] != [user for user, _ in by_tokens]  # the cache-heavy users move
    assert page.evaluate("document.querySelector('th[aria-sort=descending] a').dataset.sort") == "requests"

    page.set_hash("#/leaderboard?range=7d&sort=cache_read")
    wait_view(page, "!!document.querySelector('table[data-table=leaderboard]')", what="the leaderboard by cache read")
    first = leaderboard_rows(page)[0]
    assert (first["user"], first["values"][3]) == expected_leaderboard(page, gateway, admin, "cache_read")[0]
    shot(page, "leaderboard-by-cache-read")

    # A row opens that user's sessions.
    name = first["user"]
    page.click(f"table[data-table=leaderboard] tr[data-user={name}] a")
    wait_view(page, "document.querySelectorAll('table[data-table=sessions] tbody tr').length > 0", what=f"{name}'s sessions")
    assert page.evaluate("location.hash") == f"#/sessions?initiator={name}"
    own = api(gateway, admin, SESSIONS, q=f"initiator:{name}")["sessions"]
    rows = page.evaluate("[...document.querySelectorAll('table[data-table=sessions] tbody tr')].map(tr => [tr.dataset.id, tr.children[1].textContent])")
    assert rows == [[s["id"], name] for s in own] != []


# -- sessions (SPEC §9), on a gateway of their own ----------------------------------------------------

CLAUDE_UA = "claude-cli/2.0.14 (external, cli)"
LONG_TURNS = 210  # more than four pages of the session view's 50 turns
SESSION_PAGE = 50
LONG_TOOLS = ("Read", "Grep", "Bash")  # the long session's turns call these in turn


def _tool_blocks(content: list[dict]) -> list[dict]:
    return [block for block in content if block["type"] == "tool_use"]


def drive_claude_code_session(gateway, token: str, session_id: str) -> list[dict]:
    """A Claude-Code-shaped run through the gateway: the session header and Claude Code's User-Agent on
    every call, the whole conversation resent each turn, each turn after a tool call answering all
    of its calls with tool_result blocks, a new user prompt halfway. The fake upstream's answers (by
    fixture) call get_weather, then get_weather twice and get_time, then end; after the new prompt
    get_time, then think and end. Returns the turns in order: {id, prompt, fixture}."""
    fixtures = dict(load_fixtures("anthropic"))
    tools = {tool["name"]: tool for name in ("parallel_tool_use", "tool_use_no_arguments")
             for tool in fixtures[f"anthropic/{name}"]["request"]["tools"]}
    messages: list[dict] = []
    turns: list[dict] = []
    plan = [("tool_use", "What's the weather like in San Francisco?"), ("parallel_tool_use", None), ("tool_result", None),
            ("tool_use_no_arguments", "And what time is it here?"), ("thinking", None)]
    for fixture, prompt in plan:
        if prompt:
            messages.append({"role": "user", "content": prompt})
        client = anthropic_client(gateway.base("anthropic"), token, f"anthropic/{fixture}",
                                  **{"X-Claude-Code-Session-Id": session_id, "User-Agent": CLAUDE_UA})
        raw = client.messages.with_raw_response.create(model="claude-sonnet-4-5-20250929", max_tokens=1024,
                                                       tools=list(tools.values()), messages=messages)
        content = [block.model_dump(exclude_none=True) for block in raw.parse().content]
        turns.append({"id": raw.headers["X-AIBridge-Interception-Id"], "prompt": prompt, "fixture": fixture})
        messages.append({"role": "assistant", "content": content})
        calls = _tool_blocks(content)
        if calls:
            messages.append({"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": call["id"], "content": json.dumps({"ok": call["name"]})} for call in calls]})
    return turns


def write_long_session(database, username: str, session_id: str) -> list[str]:
    """A session of LONG_TURNS turns written with the store: a prompt, then every turn answering the
    tool call of the turn before (Read, Grep, Bash in turn), a new prompt halfway. Its ids in order."""
    store = open_store(str(database))
    try:
        user = store.identity.get_user(username)
        start = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=3)
        batch: dict[str, list[dict]] = {name: [] for name in ("interceptions", "token_usages", "user_prompts", "tool_usages")}
        ids = []
        for n in range(LONG_TURNS):
            at = start + timedelta(seconds=20 * n)
            created = format_timestamp(at + timedelta(seconds=5))
            record_id = str(uuid.uuid4())
            ids.append(record_id)
            prompt = n in (0, LONG_TURNS // 2)
            batch["interceptions"].append({
                "id": record_id, "initiator_id": user["id"], "provider": "anthropic", "provider_name": "anthropic",
                "model": "claude-sonnet-4-5-20250929", "client": "Claude Code", "client_session_id": session_id,
                "user_agent": CLAUDE_UA, "credential_kind": "centralized", "credential_hint": None,
                "correlating_tool_call_id": None if prompt else f"toolu_long_{n - 1:03d}",
                "started_at": format_timestamp(at), "ended_at": format_timestamp(at + timedelta(seconds=6)), "metadata": {}})
            batch["token_usages"].append({"id": f"tu-long-{n}", "interception_id": record_id, "provider_response_id": f"msg_long_{n}",
                                          "input_tokens": 1000 + n, "output_tokens": 50 + n, "cache_read_input_tokens": 0,
                                          "cache_write_input_tokens": 0, "metadata": {}, "created_at": created})
            if prompt:
                batch["user_prompts"].append({"id": f"up-long-{n}", "interception_id": record_id, "provider_response_id": f"msg_long_{n}",
                                              "prompt": f"long run, prompt at turn {n}", "metadata": {}, "created_at": created})
            if n < LONG_TURNS - 1:
                batch["tool_usages"].append({"id": f"tool-long-{n}", "interception_id": record_id, "provider_response_id": f"msg_long_{n}",
                                             "provider_tool_call_id": f"toolu_long_{n:03d}", "tool": LONG_TOOLS[n % 3],
                                             "input": json.dumps({"step": n}), "server_url": None, "injected": False,
                                             "invocation_error": None, "metadata": {}, "created_at": created})
        store.records.write_records(RecordBatch.load(batch))
    finally:
        store.close()
    return ids



@pytest.fixture(scope="module")
def sessions(start_gateway, upstream, tmp_path_factory) -> dict:
    """A gateway of its own: alice's Claude Code run through it (5 turns, 2 threads), bob's own short
    session, a session id both use (two sessions), and alice's 210-turn session written with the store."""
    logged = start_logged_gateway(start_gateway, upstream, tmp_path_factory.mktemp("sessions"))
    gateway = logged.gateway
    claude = f"cc-{uuid.uuid4()}"
    turns = drive_claude_code_session(gateway, logged.alice, claude)
    bobs = f"cc-{uuid.uuid4()}"
    bob_turn = _anthropic_call(gateway, logged.bob, "simple_text", extra_headers={"X-Claude-Code-Session-Id": bobs})
    shared = f"shared-{uuid.uuid4()}"
    shared_turns = {name: _anthropic_call(gateway, token, "simple_text", extra_headers={"X-Claude-Code-Session-Id": shared},
                                          messages=[{"role": "user", "content": f"{name}'s turn in a shared session id"}])
                    for name, token in (("alice", logged.alice), ("bob", logged.bob))}
    every = [turn["id"] for turn in turns] + [bob_turn, *shared_turns.values()]
    records = wait_for_records(logged.database, every)
    assert len(records) == len(every), "the sessions' calls were not all recorded"
    long_run = f"cc-long-{uuid.uuid4()}"
    long_ids = write_long_session(logged.database, "alice", long_run)
    return {"logged": logged, "gateway": gateway, "claude": claude, "turns": turns, "records": records,
            "bob_session": bobs, "bob_turn": bob_turn, "shared": shared, "shared_turns": shared_turns, "long": long_run,
            "long_ids": long_ids}


def session_timeline(page: Page) -> list[dict]:
    """The session page's threads as shown: each thread's id and its turns with what they show."""
    return page.evaluate("""[...document.querySelectorAll('[data-role=timeline] .thread-card')].map(card => ({
        thread: card.dataset.thread,
        turns: [...card.querySelectorAll('.turn')].map(li => {
            const input = li.querySelector('.turn-input');
            return {
                id: li.dataset.turn, input: input.dataset.input,
                prompt: input.querySelector('pre')?.textContent ?? null,
                answers: input.dataset.input === 'tool-results' ? input.querySelector('strong').textContent : null,
                events: [...li.querySelectorAll('.event')].map(e => e.dataset.event === 'tool'
                    ? ['tool', e.querySelector('.tool-name').textContent, e.querySelector('pre').textContent]
                    : ['thought', e.querySelector('pre').textContent]),
                tokens: [Number(li.querySelector('.turn-tokens').dataset.input), Number(li.querySelector('.turn-tokens').dataset.output)],
                marked: li.classList.contains('marked'),
            };
        })}))""")


def session_rows(page: Page) -> list[str]:
    """The ids of the sessions list's rows, in order."""
    return page.evaluate("[...document.querySelectorAll('table[data-table=sessions] tbody tr')].map(tr => tr.dataset.id)")


def signed_in(page: Page, gateway, token: str) -> None:
    """Signed in with ``token``, the overview shown."""
    sign_in(page, gateway, token)
    wait_view(page, "!!document.querySelector('[data-view=overview]')", what="the overview")


def turn_ids(page: Page) -> list[str]:
    return page.evaluate("[...document.querySelectorAll('[data-role=timeline] .turn')].map(li => li.dataset.turn)")


def expected_turn(record: dict, caller: dict | None) -> dict:
    """What the session page shows of one recorded turn: its prompt, or the names of the tools whose
    results it sends (the calls of the turn that made the call it answers), then its thoughts and tool
    calls (the recorded order: a response's thinking comes before its tool calls), its tokens."""
    prompts = [p["prompt"] for p in record["user_prompts"]]
    names = None
    if not prompts and record["correlating_tool_call_id"]:
        assert caller is not None and record["correlating_tool_call_id"] in {t["provider_tool_call_id"] for t in caller["tool_usages"]}
        names = sorted({t["tool"] for t in caller["tool_usages"]})
    events = [["thought", t["content"]] for t in record["model_thoughts"]]
    events += [["tool", t["tool"], json.dumps(json.loads(t["input"]), indent=2)] for t in record["tool_usages"]]
    tokens = [sum(u["input_tokens"] for u in record["token_usages"]), sum(u["output_tokens"] for u in record["token_usages"])]
    return {"id": record["id"], "prompt": prompts[-1] if prompts else None, "answers": names, "events": events, "tokens": tokens}


def shown_turn(turn: dict) -> dict:
    answers = sorted(turn["answers"].split(", ")) if turn["answers"] is not None else None
    return {"id": turn["id"], "prompt": turn["prompt"], "answers": answers, "events": turn["events"], "tokens": turn["tokens"]}


def test_the_session_page_shows_every_turn_in_order_with_tool_names(page, sessions):
    gateway, alice = sessions["gateway"], sessions["logged"].alice
    turns, records = sessions["turns"], sessions["records"]
    ordered = [records[turn["id"]] for turn in turns]
    signed_in(page, gateway, alice)
    page.click("#nav a[data-view=sessions]")
    row = f"table[data-table=sessions] tr[data-id=\"{sessions['claude']}\"]"
    wait_view(page, f"!!document.querySelector('{row}')", what="the Claude Code session in the list")
    page.click(f"{row} td:nth-child(5)")
    wait_view(page, f"document.querySelector('[data-view=session]')?.dataset.id === '{sessions['claude']}'", what="the session page")
    assert page.evaluate("location.hash") == f"#/sessions/{sessions['claude']}"

    shown = session_timeline(page)
    # Two threads: the first prompt's three turns (a tool call, its answer with three more calls, their
    # answer), the new prompt's two; each thread's id is its first turn's.
    assert [[t["id"] for t in thread["turns"]] for thread in shown] == [[t["id"] for t in turns[:3]], [t["id"] for t in turns[3:]]]
    assert [thread["thread"] for thread in shown] == [turns[0]["id"], turns[3]["id"]]
    callers = {tool["provider_tool_call_id"]: record for record in ordered for tool in record["tool_usages"]}
    expected = [expected_turn(record, callers.get(record["correlating_tool_call_id"])) for record in ordered]
    assert [shown_turn(turn) for thread in shown for turn in thread["turns"]] == expected
    # What a reader sees: the prompts, and which tools each other turn answers.
    assert [turn["prompt"] or f"tool results for {turn['answers']}" for thread in shown for turn in thread["turns"]] == [
        "What's the weather like in San Francisco?", "tool results for get_weather",
        f"tool results for {shown[0]['turns'][2]['answers']}", "And what time is it here?", "tool results for get_time"]
    assert sorted(shown[0]["turns"][2]["answers"].split(", ")) == ["get_time", "get_weather"]
    assert [event[1] for event in shown[0]["turns"][1]["events"]] == ["get_weather", "get_weather", "get_time"]
    assert shown[1]["turns"][1]["events"][0][0] == "thought"
    # The session's figures are the API's.
    api_session = api(gateway, alice, f"{SESSIONS}/{sessions['claude']}")
    figures = page.evaluate("Object.fromEntries([...document.querySelectorAll('.session-figures [data-figure]')].map(c => "
                            "[c.dataset.figure, c.querySelector('.stat-value').textContent]))")
    assert figures["turns"] == "5" and figures["threads"] == "2" == str(api_session["thread_count"])
    assert figures["input_tokens"] == f"{api_session['token_usage']['input']:,}"
    assert_times_name_their_zone(page)
    shot(page, "session")


def test_the_sessions_list_shows_sessions_with_the_lists_filters(page, sessions):
    gateway, alice = sessions["gateway"], sessions["logged"].alice
    signed_in(page, gateway, alice)
    page.set_hash("#/sessions")
    wait_view(page, "document.querySelectorAll('table[data-table=sessions] tbody tr').length > 0", what="the sessions list")
    expected = api(gateway, alice, SESSIONS, limit=50)
    rows = page.evaluate("""[...document.querySelectorAll('table[data-table=sessions] tbody tr')].map(tr => ({
        id: tr.dataset.id, user: tr.children[1].textContent, client: tr.children[2].textContent,
        turns: Number(tr.querySelector('[data-figure=turns]').textContent), threads: Number(tr.querySelector('[data-figure=threads]').textContent)}))""")
    assert [row["id"] for row in rows] == [s["id"] for s in expected["sessions"]]  # most recently active first
    assert {sessions["claude"], sessions["long"], sessions["bob_session"]} <= {row["id"] for row in rows}
    mine = next(row for row in rows if row["id"] == sessions["claude"])
    assert mine == {"id": sessions["claude"], "user": "alice", "client": "Claude Code", "turns": 5, "threads": 2}
    assert next(row for row in rows if row["id"] == sessions["long"])["turns"] == LONG_TURNS
    assert page.evaluate("document.querySelector('table[data-table=sessions] th').textContent") == f"Last active ({VIEWER_ZONE})"
    assert f"Started after ({VIEWER_ZONE})" in time_titles(page)
    assert_times_name_their_zone(page)
    shot(page, "sessions")

    # The interceptions list's filters, as pick lists: bob's sessions only.
    page.wait_for("[...document.querySelectorAll('select[name=initiator] option')].some(o => o.value === 'bob')", what="the users")
    choose(page, "initiator", "bob")
    page.click("form[data-form=filters] button[type=submit]")
    wait_view(page, "location.hash.includes('initiator=bob')", what="bob's sessions")
    assert session_rows(page) == [s["id"] for s in api(gateway, alice, SESSIONS, q="initiator:bob")["sessions"]] == [
        sessions["shared"], sessions["bob_session"]]

    # One a page: Next page continues after the last session shown, Newer comes back.
    page.set_hash("#/sessions?initiator=alice&limit=1")
    wait_view(page, "location.hash.includes('limit=1')", what="a page of one")
    alices = [s["id"] for s in api(gateway, alice, SESSIONS, q="initiator:alice", limit=10)["sessions"]]
    assert alices == [sessions["shared"], sessions["claude"], sessions["long"]]
    assert session_rows(page) == alices[:1]
    page.click("button[data-page=next]")
    wait_view(page, f"location.hash.includes('cursor={alices[0]}')", what="the second page")
    assert session_rows(page) == alices[1:2]
    assert "2–2 of 3" in page.evaluate("document.querySelector('[data-role=count]').textContent")
    page.click("button[data-page=newer]")
    wait_view(page, "!location.hash.includes('cursor=')", what="the first page again")
    assert session_rows(page) == alices[:1]


def test_a_long_session_pages_through_every_turn(page, sessions):
    gateway, alice, ids = sessions["gateway"], sessions["logged"].alice, sessions["long_ids"]
    signed_in(page, gateway, alice)
    page.set_hash(f"#/sessions/{sessions['long']}")
    seen: list[list[str]] = []
    for number in range(1, 10):
        wait_view(page, "document.querySelectorAll('[data-role=timeline] .turn').length > 0", what=f"page {number} of the turns")
        shown = session_timeline(page)
        seen.append([turn["id"] for thread in shown for turn in thread["turns"]])
        assert 0 < len(seen[-1]) <= SESSION_PAGE
        # Every turn but the two prompts names the tool it answers, the first of a page too.
        for thread in shown:
            for turn in thread["turns"]:
                n = ids.index(turn["id"])
                assert turn["prompt"] == (f"long run, prompt at turn {n}" if n in (0, LONG_TURNS // 2) else None)
                assert turn["answers"] == (None if turn["prompt"] else LONG_TOOLS[(n - 1) % 3]), (n, turn)
        if page.evaluate("document.querySelector('[data-page=later]').classList.contains('disabled')"):
            break
        page.click("[data-page=later]")
        page.wait_for(f"location.hash.includes('after={seen[-1][-1]}')", what=f"the address of page {number + 1}")
    assert [i for one in seen for i in one] == ids  # every turn once, in order
    assert page.evaluate("document.querySelector('[data-role=turns-shown]').textContent") == (
        f"Turns {LONG_TURNS - len(seen[-1]) + 1}–{LONG_TURNS} of {LONG_TURNS}")
    shot(page, "session-long-last-page")
    page.click("[data-page=earlier]")
    wait_view(page, f"location.hash.includes('before={seen[-1][0]}')", what="the page before the last")
    assert turn_ids(page) == seen[-2]

    # A turn deep in the second thread, by its address: the page with it, the turn marked.
    second_thread, target = ids[LONG_TURNS // 2], ids[LONG_TURNS - 20]
    page.set_hash(f"#/sessions/{sessions['long']}?thread={second_thread}&turn={target}")
    wait_view(page, f"!!document.querySelector('.turn.marked[data-turn=\"{target}\"]')", what="the marked turn")
    assert page.evaluate("[...document.querySelectorAll('.thread-card')].map(c => c.dataset.thread)") == [second_thread]
    assert target in turn_ids(page) and len(turn_ids(page)) <= SESSION_PAGE


def test_every_interception_links_to_its_session_and_thread(page, sessions):
    gateway, alice, turns = sessions["gateway"], sessions["logged"].alice, sessions["turns"]
    signed_in(page, gateway, alice)
    page.set_hash("#/interceptions?client=Claude%20Code&limit=200")
    wait_view(page, f"!!document.querySelector('tr[data-id=\"{turns[4]['id']}\"]')", what="the session's interceptions")
    links = page.evaluate("Object.fromEntries([...document.querySelectorAll('table[data-table=interceptions] tbody tr')].map(tr => "
                          "[tr.dataset.id, tr.querySelector('[data-role=session-link]')?.getAttribute('href')]))")
    for n, turn in enumerate(turns):
        thread = turns[0 if n < 3 else 3]["id"]
        assert links[turn["id"]] == f"#/sessions/{sessions['claude']}?thread={thread}&turn={turn['id']}"
    assert all(href for href in links.values())  # the long session's turns link too

    # From the list: the session at that turn of its thread, marked.
    page.click(f"tr[data-id=\"{turns[4]['id']}\"] [data-role=session-link]")
    wait_view(page, f"!!document.querySelector('.turn.marked[data-turn=\"{turns[4]['id']}\"]')", what="the turn in its session")
    assert page.evaluate("document.querySelector('.thread-card.marked').dataset.thread") == turns[3]["id"]

    # From the detail view: the session, and the thread.
    page.set_hash(f"#/interceptions/{turns[1]['id']}")
    wait_view(page, f"document.querySelector('[data-view=detail]')?.dataset.id === '{turns[1]['id']}'", what="the detail view")
    assert page.evaluate("document.querySelector('[data-role=session-link]').getAttribute('href')") == f"#/sessions/{sessions['claude']}"
    shot(page, "detail-with-session")
    page.click("[data-role=open-session]")
    wait_view(page, f"!!document.querySelector('.turn.marked[data-turn=\"{turns[1]['id']}\"]')", what="the turn from its detail view")
    assert page.evaluate("location.hash") == f"#/sessions/{sessions['claude']}?thread={turns[0]['id']}&turn={turns[1]['id']}"
    # And back: a turn's time opens its interception.
    page.click(f".turn[data-turn=\"{turns[2]['id']}\"] .turn-time")
    wait_view(page, f"document.querySelector('[data-view=detail]')?.dataset.id === '{turns[2]['id']}'", what="a turn's detail")


def test_a_pasted_session_link_opens_after_sign_in(browser, sessions):
    gateway, claude = sessions["gateway"], sessions["claude"]
    tab = new_tab(browser, fresh_context=True)
    try:
        tab.navigate(f"{gateway.url}/dashboard/#/sessions/{claude}")
        tab.wait_for("!!document.querySelector('form[data-form=login] #token')", what="the login form")
        assert tab.evaluate("sessionStorage.length") == 0
        tab.type_into("#token", sessions["logged"].alice)
        tab.press_enter()
        wait_view(tab, f"document.querySelector('[data-view=session]')?.dataset.id === '{claude}'", what="the pasted session")
        assert tab.evaluate("location.hash") == f"#/sessions/{claude}"
        assert [t["id"] for thread in session_timeline(tab) for t in thread["turns"]] == [t["id"] for t in sessions["turns"]]
        shot(tab, "session-deep-link")
        assert tab.exceptions == [], tab.exceptions
    finally:
        tab.close()


def test_a_non_admin_sees_only_their_own_sessions(page, sessions):
    gateway, bob = sessions["gateway"], sessions["logged"].bob
    signed_in(page, gateway, bob)
    page.set_hash("#/sessions")
    wait_view(page, "document.querySelectorAll('table[data-table=sessions] tbody tr').length > 0", what="bob's sessions")
    assert session_rows(page) == [sessions["shared"], sessions["bob_session"]]
    assert page.evaluate("document.querySelector('form[data-form=filters] [name=initiator]')") is None
    page.set_hash(f"#/sessions/{sessions['claude']}")
    wait_view(page, "!!document.querySelector('[data-view=session] .notice.error')", what="the refusal of alice's session")
    assert "was not found" in page.evaluate("document.querySelector('[data-view=session] .notice.error').textContent")
    assert "San Francisco" not in page.evaluate("document.body.innerText")


def test_the_leaderboard_links_each_user_to_their_sessions(page, sessions):
    gateway, alice = sessions["gateway"], sessions["logged"].alice
    signed_in(page, gateway, alice)
    page.set_hash("#/leaderboard")
    wait_view(page, "!!document.querySelector('table[data-table=leaderboard] tr[data-user=alice]')", what="the leaderboard")
    page.click("table[data-table=leaderboard] tr[data-user=alice] a")
    wait_view(page, "document.querySelectorAll('table[data-table=sessions] tbody tr').length > 0", what="alice's sessions")
    assert page.evaluate("location.hash") == "#/sessions?initiator=alice"
    assert session_rows(page) == [
        s["id"] for s in api(gateway, alice, SESSIONS, q="initiator:alice")["sessions"]]


def test_a_session_id_two_users_share_asks_whose(page, sessions):
    """An administrator opening an id that names two users' sessions chooses whose; each opens by itself."""
    gateway, alice, shared = sessions["gateway"], sessions["logged"].alice, sessions["shared"]
    signed_in(page, gateway, alice)
    page.set_hash(f"#/sessions/{shared}")
    wait_view(page, "!!document.querySelector('[data-role=whose] a')", what="the choice of whose session")
    choices = page.evaluate("[...document.querySelectorAll('[data-role=whose] a')].map(a => [a.textContent, a.getAttribute('href')])")
    assert sorted(choices) == [[name, f"#/sessions/{shared}?initiator={name}"] for name in ("alice", "bob")]
    page.click("[data-role=whose] a[href$='initiator=bob']")
    wait_view(page, f"document.querySelector('[data-view=session]')?.dataset.id === '{shared}'", what="bob's session of that id")
    assert turn_ids(page) == [sessions["shared_turns"]["bob"]]
    assert session_timeline(page)[0]["turns"][0]["prompt"] == "bob's turn in a shared session id"


def test_a_hostile_session_id_is_text_and_its_links_open_it(page, sessions):
    """A client chooses its session id: one that is markup and holds / ? # % & is shown as text and
    opens from the list and from its interception; an address that is not valid percent-encoding is
    no page (and no uncaught error: the page fixture checks)."""
    gateway, logged = sessions["gateway"], sessions["logged"]
    store = open_store(str(logged.database))
    try:
        store.identity.create_user("mallory")  # a user of its own: the other tests' lists stay as they expect
        mallory = store.identity.create_token("mallory")[0]
    finally:
        store.close()
    turn = _anthropic_call(gateway, mallory, "simple_text", extra_headers={"X-Claude-Code-Session-Id": HOSTILE_SESSION})
    assert wait_for_records(logged.database, [turn]), "mallory's call was not recorded"
    target = json.dumps(HOSTILE_SESSION)
    opened = f"document.querySelector('[data-view=session]')?.dataset.id === {target}"
    signed_in(page, gateway, logged.alice)
    page.set_hash("#/sessions?initiator=mallory")
    row = f"[...document.querySelectorAll('table[data-table=sessions] tbody tr')].find(tr => tr.dataset.id === {target})"
    wait_view(page, f"!!{row}", what="mallory's session in the list")
    page.evaluate(f"{row}.querySelector('a.row-link').click()")
    wait_view(page, opened, what="the session from its row")
    assert page.evaluate("document.querySelector('[data-view=session] h1 .mono').textContent") == HOSTILE_SESSION
    assert turn_ids(page) == [turn]

    page.set_hash(f"#/interceptions/{turn}")
    wait_view(page, f"document.querySelector('[data-view=detail]')?.dataset.id === '{turn}'", what="its interception")
    assert page.evaluate("document.querySelector('[data-role=session-link]').textContent") == HOSTILE_SESSION
    page.click("[data-role=open-session]")
    wait_view(page, f"({opened}) && !!document.querySelector('.turn.marked[data-turn=\"{turn}\"]')",
              what="the session from its interception, the turn marked")
    time.sleep(0.5)  # an onerror would fire once the image failed to load
    assert page.evaluate("document.querySelectorAll('img, #xss-bold').length") == 0
    assert page.evaluate("typeof window.__xss") == "undefined" and page.dialogs == []
    shot(page, "session-hostile-id")

    page.set_hash("#/sessions/%E0%A4%A")
    wait_view(page, "!!document.querySelector('.notice.error')", what="the malformed address refused")
    assert page.evaluate("document.querySelector('.notice.error').textContent") == "There is no such page."


# -- costs and budgets (SPEC §11, issue 19), on a gateway of its own -----------------------------------

BUDGETS = "/api/v2/aibridge/budgets"
#: The priced gateway's records: (user, provider, model, client, client session id, its token usage's cost_usd).
PRICED = [
    ("alice", "anthropic", "claude-sonnet-4-5", "Claude Code", "priced-alice", 0.25),
    ("alice", "anthropic", "claude-sonnet-4-5", "Claude Code", "priced-alice", 1.5),
    ("bob", "openai", "gpt-4o", "codex", "priced-bob", 3.125),
    ("carol", "anthropic", "claude-haiku-4-5", "Claude Code", "priced-carol", 0.0042),
    ("carol", "anthropic", "local-llama", "Claude Code", "priced-carol", None),  # a model without a price
]
#: A username with markup. The users API refuses such a name (letters, digits, '_', '.', '-'), but a
#: store another version or a migration filled may hold one: the page must show it as text.
HOSTILE_USER = '<img src=x onerror="window.__xss = 4"><b id="xss-bold">mallory</b>'


def write_priced_records(database) -> dict[str, list[str]]:
    """PRICED written with the store (carol made first), now: each user's interception ids in order."""
    store = open_store(str(database))
    try:
        users = {name: store.identity.get_user(name) or store.identity.create_user(name) for name in ("alice", "bob", "carol")}
        at = datetime.now(timezone.utc).replace(microsecond=0)
        batch: dict[str, list[dict]] = {"interceptions": [], "token_usages": []}
        ids: dict[str, list[str]] = {}
        for n, (user, provider, model, client, session_id, cost) in enumerate(PRICED):
            record_id = str(uuid.uuid4())
            ids.setdefault(user, []).append(record_id)
            started = at - timedelta(seconds=len(PRICED) - n)
            batch["interceptions"].append({
                "id": record_id, "initiator_id": users[user]["id"], "provider": provider, "provider_name": provider,
                "model": model, "client": client, "client_session_id": session_id, "user_agent": "priced/1",
                "credential_kind": "centralized", "credential_hint": None, "correlating_tool_call_id": None,
                "started_at": format_timestamp(started), "ended_at": format_timestamp(started + timedelta(milliseconds=500)),
                "metadata": {}})
            batch["token_usages"].append({"id": f"tu-{record_id}", "interception_id": record_id, "provider_response_id": f"msg-{n}",
                                          "input_tokens": 1000, "output_tokens": 100, "cache_read_input_tokens": 0,
                                          "cache_write_input_tokens": 0, "metadata": {}, "created_at": format_timestamp(started),
                                          "cost_usd": cost})
        store.records.write_records(RecordBatch.load(batch))
        return ids
    finally:
        store.close()


def give_hostile_name(database) -> str:
    """A user whose stored name is HOSTILE_USER (written past the users API's rule, as another version
    could have): their id."""
    store = open_store(str(database))
    try:
        user = store.identity.create_user("mallory")
    finally:
        store.close()
    with sqlite3.connect(database) as db:  # past the store's rules on purpose
        db.execute("UPDATE users SET username = ? WHERE id = ?", [HOSTILE_USER, user["id"]])
    return user["id"]


@pytest.fixture(scope="module")
def priced(start_gateway, upstream, tmp_path_factory) -> dict:
    """A gateway whose store holds PRICED (known costs, one call unpriced), and a token for carol."""
    logged = start_logged_gateway(start_gateway, upstream, tmp_path_factory.mktemp("priced"))
    ids = write_priced_records(logged.database)
    store = open_store(str(logged.database))
    try:
        carol, _ = store.identity.create_token("carol")
    finally:
        store.close()
    wait_usage_stable(logged.gateway, logged.alice, at_least=len(PRICED))
    return {"logged": logged, "gateway": logged.gateway, "admin": logged.alice, "bob": logged.bob, "carol": carol, "ids": ids}


def spend_by(field: int) -> dict[str, float | None]:
    """PRICED's spend summed by user (0), model (2) or client (3); None where nothing was priced."""
    spend: dict[str, float | None] = {}
    for row in PRICED:
        key, cost = row[field], row[5]
        spend[key] = spend.get(key) if cost is None else (spend.get(key) or 0) + cost
    return spend


def usd(value: float | None) -> str:
    """The dashboard's USD: two decimals from a dollar, two significant digits below it, halves rounded
    up as the browser rounds them; None -> "—"."""
    if value is None:
        return "—"
    decimals = 2 if value == 0 or abs(value) >= 1 else min(6, max(2, 1 - math.floor(math.log10(abs(value)))))
    return f"${Decimal(str(value)).quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_UP):,}"


def spend_legend(page: Page) -> dict[str, str]:
    """The spend chart's legend: each series' label and its total as shown."""
    return dict(page.evaluate("""[...document.querySelectorAll('.chart-card')].filter(c => c.querySelector('h2').textContent === 'Spend')
        .flatMap(c => [...c.querySelectorAll('.legend li')]).map(li => [li.querySelector('.legend-label').textContent,
        li.querySelector('.legend-value').textContent])"""))


def test_the_overview_shows_spend_over_time_and_in_total(page, priced):
    gateway, admin = priced["gateway"], priced["admin"]
    usage = api(gateway, admin, USAGE, by="user", bucket="hour", since="7d")
    total = sum(cost for *_, cost in PRICED if cost is not None)
    assert usage["totals"]["cost_usd"] == pytest.approx(total) and usage["totals"]["unpriced_token_usages"] == 1
    sign_in(page, gateway, admin)
    wait_view(page, "!!document.querySelector('[data-spend=cost_usd]')", what="the overview's spend total")
    card = page.evaluate("""(() => { const c = document.querySelector('[data-spend=cost_usd]');
        return [Number(c.dataset.value), c.querySelector('.stat-value').textContent, c.querySelector('[data-role=unpriced]')?.textContent]; })()""")
    assert card[0] == pytest.approx(total) and card[1] == usd(total) == "$4.88"
    assert card[2] == "excludes 1 call to models without a price"
    # The second chart shows tokens or, switched, spend.
    page.click("[data-control=measure] a[data-value=spend]")
    wait_view(page, "location.hash.includes('measure=spend')", what="the spend chart")
    for by, field in (("user", 0), ("model", 2), ("client", 3)):
        page.set_hash(f"#/overview?range=7d&by={by}&kind=all&measure=spend")
        wait_view(page, f"location.hash.includes('by={by}') && !!document.querySelector('table[data-table=groups]')",
                  what=f"the overview by {by}")
        expected = {name: usd(cost) for name, cost in spend_by(field).items()}
        assert spend_legend(page) == expected, by
        rows = page.evaluate("[...document.querySelectorAll('table[data-table=groups] tbody tr')].map(tr => "
                             "[tr.children[0].textContent, tr.querySelector('[data-figure=cost_usd]').textContent])")
        assert dict(rows) == expected
        # the spend chart's bars add up to the priced spend, in USD, on a UTC axis like the others
        bars = page.evaluate("""[...document.querySelectorAll('.chart-card')].filter(c => c.querySelector('h2').textContent === 'Spend')
            .map(c => [c.querySelector('svg').dataset.zone, c.querySelector('.axis-title').textContent,
                       c.querySelectorAll('rect.bar').length])[0]""")
        assert bars[0] == "UTC" and bars[1].endswith("(UTC)") and bars[2] >= 1
        if by == "user":
            shot(page, "overview-spend")
    assert_times_name_their_zone(page)


def test_the_leaderboard_sorts_by_spend(page, priced):
    gateway, admin = priced["gateway"], priced["admin"]
    sign_in(page, gateway, admin)
    wait_view(page, "!!document.querySelector('[data-view=overview]')", what="the overview")
    page.set_hash("#/leaderboard?range=7d&sort=requests")
    wait_view(page, "!!document.querySelector('table[data-table=leaderboard]')", what="the leaderboard")
    page.click("a[data-sort=spend]")
    wait_view(page, "location.hash.includes('sort=spend') && !!document.querySelector('table[data-table=leaderboard]')",
              what="the leaderboard by spend")
    rows = page.evaluate("""[...document.querySelectorAll('table[data-table=leaderboard] tbody tr')].map(tr => [tr.dataset.user,
        tr.querySelector('[data-figure=cost_usd]').textContent, tr.querySelector('[data-figure=cost_usd]').classList.contains('sorted')])""")
    spend = spend_by(0)
    users = [user["username"] for user in api(gateway, admin, USERS)]
    expected = sorted(((name, spend.get(name)) for name in users), key=lambda item: (-(item[1] or 0), item[0]))
    assert [(user, shown) for user, shown, _ in rows] == [(name, usd(cost)) for name, cost in expected]
    assert [user for user, *_ in rows][:3] == ["bob", "alice", "carol"] and all(sorted_ for *_, sorted_ in rows)
    assert page.evaluate("document.querySelector('th[aria-sort=descending] a').dataset.sort") == "spend"
    shot(page, "leaderboard-by-spend")


def test_interception_and_session_pages_show_cost(page, priced):
    gateway, admin = priced["gateway"], priced["admin"]
    carol_priced, carol_unpriced = priced["ids"]["carol"]
    sign_in(page, gateway, admin)
    wait_view(page, "!!document.querySelector('[data-view=overview]')", what="the overview")
    for record_id, shown in ((carol_priced, "$0.0042"), (carol_unpriced, "—")):
        page.set_hash(f"#/interceptions/{record_id}")
        wait_view(page, f"document.querySelector('[data-view=detail]')?.dataset.id === {json.dumps(record_id)}", what="the detail")
        assert api(gateway, admin, f"{INTERCEPTIONS}/{record_id}")["cost_usd"] == (0.0042 if shown != "—" else None)
        assert page.evaluate("document.querySelector('[data-usage=cost_usd] .stat-value').textContent") == shown
        assert page.evaluate("[...document.querySelectorAll('[data-section=usage] td[data-figure=cost_usd]')].map(td => td.textContent)") == [shown]
        if shown == "—":
            assert page.evaluate("!!document.querySelector('[data-section=usage] [data-role=unpriced]')")
            shot(page, "detail-unpriced")
    session = api(gateway, admin, SESSIONS, q="session_id:priced-alice")["sessions"][0]
    assert session["cost_usd"] == pytest.approx(1.75)
    page.set_hash(f"#/sessions/{session['id']}")
    wait_view(page, "!!document.querySelector('[data-role=timeline]')", what="alice's priced session")
    assert page.evaluate("document.querySelector('[data-figure=cost] .stat-value').textContent") == "$1.75"
    turns = page.evaluate("[...document.querySelectorAll('li.turn .turn-cost')].map(e => e.textContent)")
    assert turns == ["$0.25", "$1.50"]
    threads = page.evaluate("[...document.querySelectorAll('.thread-head .turn-cost')].map(e => e.textContent)")
    detail = api(gateway, admin, f"{SESSIONS}/{session['id']}")
    assert threads == [usd(thread["cost_usd"]) for thread in detail["threads"]]
    shot(page, "session-cost")


def budget_rows(page: Page) -> dict[str, list[str]]:
    """The budgets table: each row's key (a user id, or "default") and its cells' text."""
    return dict(page.evaluate("[...document.querySelectorAll('table[data-table=budgets] tbody tr')].map(tr => "
                              "[tr.dataset.budget, [...tr.children].map(td => td.textContent)])"))


def budget_status(page: Page) -> str:
    return page.wait_for("document.querySelector('[data-role=budget-status] .notice')?.textContent", what="the form's answer")


def save_budget(page: Page, whose: str, period: str, usd_limit: str, tokens: str) -> None:
    page.evaluate("document.querySelector('[data-role=budget-status]').replaceChildren()")
    page.evaluate(f"document.querySelector('form[data-form=budget] [name=whose]').value = {json.dumps(whose)}")
    page.evaluate(f"document.querySelector('form[data-form=budget] [name=period]').value = {json.dumps(period)}")
    page.type_into("form[data-form=budget] [name=limit_usd]", usd_limit)
    page.type_into("form[data-form=budget] [name=limit_tokens]", tokens)
    page.click("form[data-form=budget] button[type=submit]")


def test_an_admin_sets_changes_and_deletes_budgets_on_the_page(page, priced):
    gateway, admin = priced["gateway"], priced["admin"]
    carol = next(user for user in api(gateway, admin, USERS) if user["username"] == "carol")
    sign_in(page, gateway, admin)
    wait_view(page, "!!document.querySelector('[data-view=overview]')", what="the overview")
    page.click("#nav a[data-view=budgets]")
    wait_view(page, "!!document.querySelector('form[data-form=budget]') && !document.querySelector('[data-view=budgets] .loading')",
              what="the budgets page")

    # The API's refusals, as it words them (the same body sent to it: its 400 message).
    for usd_limit, tokens, body in (("", "", {}), ("-1", "", {"limit_usd": -1}), ("", "1.5", {"limit_tokens": 1.5})):
        refused = requests.put(f"{gateway.url}{BUDGETS}/{carol['id']}", json={"period": "week", "limit_usd": None,
                               "limit_tokens": None, **body}, headers={"Authorization": f"Bearer {admin}"}, timeout=10)
        assert refused.status_code == 400
        save_budget(page, carol["id"], "week", usd_limit, tokens)
        assert budget_status(page) == f"The budget was not saved: {refused.json()['message']}"
    assert api(gateway, admin, BUDGETS)["budgets"] == []

    save_budget(page, carol["id"], "week", "5", "")
    assert budget_status(page) == "Saved the budget of carol."
    page.wait_for(f"!!document.querySelector('tr[data-budget={json.dumps(carol['id'])}]')", what="carol's budget in the table")
    saved = api(gateway, admin, f"{BUDGETS}/carol")
    assert (saved["period"], saved["limit_usd"], saved["limit_tokens"]) == ("week", 5.0, None)
    save_budget(page, "", "day", "", "200000")
    page.wait_for("!!document.querySelector('tr[data-budget=default]')", what="the default budget in the table")
    default = api(gateway, admin, f"{BUDGETS}/default")
    assert (default["period"], default["limit_usd"], default["limit_tokens"]) == ("day", None, 200000)

    rows = budget_rows(page)
    assert list(rows) == ["default", carol["id"]]  # the default first
    whose, period, limit_usd, limit_tokens, spent_usd, tokens_used, resets, state, _ = rows[carol["id"]]
    assert (whose, period, limit_usd, limit_tokens) == ("carol", "Week (UTC, from Monday)", "$5.00", "—")
    assert (spent_usd, tokens_used, state) == (usd(saved["spend_usd"]), f"{saved['spend_tokens']:,}", "under the limit")
    assert saved["spend_usd"] == pytest.approx(0.0042) and spent_usd == "$0.0042"  # carol's priced call this week
    assert in_viewer_zone(resets, saved["resets_at"])
    assert rows["default"][0] == "Default (everyone without their own)" and rows["default"][4] == "per user"
    assert_times_name_their_zone(page)
    shot(page, "budgets")

    # Edit fills the form with the budget; saving replaces it.
    page.click(f"tr[data-budget={json.dumps(carol['id'])}] [data-action=edit]")
    assert page.evaluate("[...document.querySelectorAll('form[data-form=budget] [name]')].map(e => e.value)") == [carol["id"], "week", "5", ""]
    page.type_into("form[data-form=budget] [name=limit_usd]", "7.5")
    page.evaluate("document.querySelector('[data-role=budget-status]').replaceChildren()")
    page.click("form[data-form=budget] button[type=submit]")
    assert budget_status(page) == "Saved the budget of carol."
    assert api(gateway, admin, f"{BUDGETS}/carol")["limit_usd"] == 7.5
    page.wait_for(f"document.querySelector('tr[data-budget={json.dumps(carol['id'])}]').children[2].textContent === '$7.50'",
                  what="the new limit in the table")

    # Delete asks once more, then deletes.
    delete = f"tr[data-budget={json.dumps(carol['id'])}] [data-action=delete]"
    page.click(delete)
    assert requests.get(f"{gateway.url}{BUDGETS}/carol", headers={"Authorization": f"Bearer {admin}"}, timeout=10).status_code == 200
    page.click(delete)
    page.wait_for(f"!document.querySelector('tr[data-budget={json.dumps(carol['id'])}]')", what="carol's budget gone")
    gone = requests.get(f"{gateway.url}{BUDGETS}/carol", headers={"Authorization": f"Bearer {admin}"}, timeout=10)
    assert gone.status_code == 404
    assert budget_status(page) == "Deleted the budget of carol."
    assert list(budget_rows(page)) == ["default"]
    page.click("tr[data-budget=default] [data-action=delete]")
    page.click("tr[data-budget=default] [data-action=delete]")
    page.wait_for("!!document.querySelector('[data-view=budgets] .table-card .notice')", what="no budgets left")
    assert api(gateway, admin, BUDGETS)["budgets"] == []


def my_budget(page: Page) -> dict[str, str]:
    return dict(page.evaluate("[...document.querySelectorAll('[data-role=my-budget] .meta-item')].map(e => "
                              "[e.querySelector('dt').textContent, e.querySelector('dd').textContent])"))


def test_a_non_admin_sees_their_own_budget_only(page, priced):
    gateway, admin, bob = priced["gateway"], priced["admin"], priced["bob"]
    headers = {"Authorization": f"Bearer {admin}"}

    def put(name: str, body: dict) -> requests.Response:
        return requests.put(f"{gateway.url}{BUDGETS}/{name}", json=body, headers=headers, timeout=10)

    try:
        assert put("default", {"period": "month", "limit_usd": 10}).status_code == 200
        assert put("alice", {"period": "day", "limit_usd": 1}).status_code == 200
        sign_in(page, gateway, bob)
        wait_view(page, "!!document.querySelector('[data-view=overview]')", what="the overview")
        page.click("#nav a[data-view=budgets]")
        wait_view(page, "!!document.querySelector('[data-role=my-budget]')", what="bob's budget")
        mine = api(gateway, bob, f"{BUDGETS}/me")["budget"]
        shown = my_budget(page)
        assert shown["Budget"] == "the default budget (you have none of your own)"
        assert (shown["Period"], shown["Limit USD"], shown["Limit tokens"]) == ("Month (UTC)", "$10.00", "—")
        assert shown["Spent USD this period"] == usd(mine["spend_usd"]) == "$3.13"  # bob's call this month
        assert in_viewer_zone(shown[f"Resets ({VIEWER_ZONE})"], mine["resets_at"])
        # Nothing of anyone else's: no form, no list (the page never asks for it: it is admin only).
        assert page.evaluate("!document.querySelector('form[data-form=budget]') && !document.querySelector('table[data-table=budgets]')")
        assert not page.evaluate("performance.getEntriesByType('resource').some(e => /\\/aibridge\\/budgets(\\?|$)/.test(e.name))")
        assert "alice" not in page.evaluate("document.getElementById('main').textContent")
        shot(page, "budgets-non-admin")

        assert put("bob", {"period": "week", "limit_tokens": 5000}).status_code == 200
        page.reload()
        wait_view(page, "!!document.querySelector('[data-role=my-budget]')", what="bob's own budget")
        shown = my_budget(page)
        assert (shown["Budget"], shown["Period"], shown["Limit USD"], shown["Limit tokens"]) == (
            "your own budget", "Week (UTC, from Monday)", "—", "5,000")
    finally:
        for name in ("default", "alice", "bob"):
            requests.delete(f"{gateway.url}{BUDGETS}/{name}", headers=headers, timeout=10)


def test_a_hostile_username_in_budgets_is_text(page, priced):
    gateway, admin = priced["gateway"], priced["admin"]
    logged = priced["logged"]
    mallory = give_hostile_name(logged.database)
    headers = {"Authorization": f"Bearer {admin}"}
    # a user named "default" has a budget of their own (by id), not the default budget
    named_default = requests.post(f"{gateway.url}{USERS}", json={"username": "default"}, headers=headers, timeout=10).json()
    try:
        assert requests.put(f"{gateway.url}{BUDGETS}/{mallory}", json={"period": "day", "limit_usd": 2}, headers=headers,
                            timeout=10).status_code == 200
        sign_in(page, gateway, admin)
        wait_view(page, "!!document.querySelector('[data-view=overview]')", what="the overview")
        page.set_hash("#/budgets")
        wait_view(page, f"!!document.querySelector('tr[data-budget={json.dumps(mallory)}]')", what="mallory's budget")
        assert budget_rows(page)[mallory][0] == HOSTILE_USER
        assert page.evaluate(f"[...document.querySelectorAll('[name=whose] option')].some(o => o.textContent === {json.dumps(HOSTILE_USER)})")
        assert page.evaluate("window.__xss === undefined && !document.getElementById('xss-bold') && !document.querySelector('main img')")

        save_budget(page, named_default["id"], "day", "3", "")
        assert budget_status(page) == "Saved the budget of default."
        page.wait_for(f"!!document.querySelector('tr[data-budget={json.dumps(named_default['id'])}]')", what="default's own budget")
        assert requests.get(f"{gateway.url}{BUDGETS}/default", headers=headers, timeout=10).status_code == 404  # no default budget
        assert budget_rows(page)[named_default["id"]][0] == "default"
        shot(page, "budgets-hostile-username")
    finally:
        for whose in (mallory, named_default["id"]):
            requests.delete(f"{gateway.url}{BUDGETS}/{whose}", headers=headers, timeout=10)
