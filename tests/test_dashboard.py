"""The admin dashboard (SPEC §8) in a real headless Chromium against the real gateway under gunicorn.

Records are made by real calls through the gateway to the fake upstream; the browser is Debian's
``chromium`` driven over the DevTools protocol (tests/cdp.py). Every view is saved as a screenshot
under test-artifacts/dashboard/ for a person to look at.
"""

from __future__ import annotations

import json
import os
import re
import time

import pytest
import requests

from tests.cdp import CHROMIUM, Browser, Page
from tests.harness import REPO, wait_for_records
from tests.sdk_calls import _split_kwargs, anthropic_client, load_fixtures, openai_client

ARTIFACTS = REPO / "test-artifacts" / "dashboard"
STATIC = REPO / "bridge" / "dashboard" / "static"
USAGE = "/api/v2/aibridge/usage"
INTERCEPTIONS = "/api/v2/aibridge/interceptions"
XSS_PROMPT = '<img src=x onerror="window.__xss = 1; alert(1)"> is <b id="xss-bold">this</b> bold? <script>window.__xss = 2</script>'
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
    chromium = Browser(tmp_path_factory.mktemp("chromium") / "profile").start()
    yield chromium
    chromium.close()


@pytest.fixture
def page(browser):
    tab = browser.new_page()
    yield tab
    assert tab.exceptions == [], f"uncaught errors in the page: {tab.exceptions}"
    browser.call("Target.closeTarget", {"targetId": tab.target_id})


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


def test_bad_and_non_admin_tokens_are_refused(page, gateway, identities):
    sign_in(page, gateway, "not-a-gateway-token")
    assert "not accepted" in login_message(page)
    assert page.evaluate("sessionStorage.getItem('bridge.dashboard.token')") is None
    shot(page, "login-refused-bad-token")

    sign_in(page, gateway, identities.bob)
    assert "not belong to an administrator" in login_message(page)
    assert page.evaluate("sessionStorage.getItem('bridge.dashboard.token')") is None
    assert page.evaluate("document.getElementById('nav').hidden") is True
    shot(page, "login-refused-non-admin")


def test_admin_signs_in_sees_the_overview_and_signs_out(page, gateway, identities, seeded):
    wait_usage_stable(gateway, identities.alice, at_least=len(seeded["records"]))
    open_dashboard(page, gateway)
    shot(page, "login")
    page.type_into("#token", identities.alice)
    page.press_enter()
    wait_view(page, "document.querySelectorAll('[data-view=overview] svg.chart-svg').length >= 3"
              " && document.querySelectorAll('svg.chart-svg rect.bar').length > 0", what="the overview charts")
    assert page.evaluate("sessionStorage.getItem('bridge.dashboard.token')") == identities.alice

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

    page.type_into("input[name=model]", FILTER_MODEL)
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

    # Its own URL (id and started_at), opened afresh: one small time-window query finds it.
    assert page.evaluate("location.hash").startswith(f"#/interceptions/{xss}?at=")
    page.reload()
    wait_view(page, f"document.querySelector('[data-view=detail]')?.dataset.id === '{xss}'", what="the detail view after a reload")
    assert page.evaluate("document.querySelector('[data-section=prompt] pre').textContent") == XSS_PROMPT
    queries = page.evaluate("performance.getEntriesByType('resource').map(e => e.name).filter(n => n.includes('/aibridge/interceptions'))")
    assert len(queries) == 1 and "started_after" in requests.utils.unquote(queries[0]), queries
    assert page.evaluate("document.querySelectorAll('img').length") == 0 and page.dialogs == []
