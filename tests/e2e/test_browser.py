"""The web UI in a real headless Chromium against one real stack (every process, Postgres, NATS).

The tests run in order and share what they made: Ada registers, generates, opens and publishes her
image, inpaints it and manages API keys; Bob (an administrator) finds it in the community feed from
a second browser context, likes and hides it. Screenshots of the generate and image pages land in
the module's tmp dir (the path is printed).
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Locator, Page, expect, sync_playwright

from services.local.stack import Stack
from tests.stacks import grant_admin, isolated_stack

pytestmark = pytest.mark.timeout(240)

PASSWORD = "correct horse battery staple"
NEW_PASSWORD = "a brand new battery horse"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
JOB_TIMEOUT_MS = 90_000
STEPS = 4


@dataclass
class World:
    base: str
    shots: Path
    ada: str = field(default_factory=lambda: f"ada{uuid.uuid4().hex[:8]}")
    bob: str = field(default_factory=lambda: f"bob{uuid.uuid4().hex[:8]}")
    prompt: str = field(default_factory=lambda: f"lighthouse {uuid.uuid4().hex[:6]} at dusk")
    image_id: str = ""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    shots = tmp_path_factory.mktemp("screenshots")
    print(f"\nscreenshots: {shots}")
    return World(base="", shots=shots)


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, postgres_url: str, models_dir: Path, world: World
) -> Iterator[Stack]:
    """Bob becomes an administrator once he has signed up (see test_admin_hides_and_unhides)."""
    with isolated_stack(tmp_path_factory, postgres_url, models_dir, "browser") as s:
        world.base = s.gateway_url
        yield s


@pytest.fixture(scope="module")
def browser(stack: Stack) -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def _context(browser: Browser) -> BrowserContext:
    ctx = browser.new_context(viewport={"width": 1280, "height": 860}, color_scheme="light")
    ctx.set_default_timeout(20_000)
    return ctx


@pytest.fixture(scope="module")
def ada(browser: Browser) -> Iterator[Page]:
    ctx = _context(browser)
    page = ctx.new_page()
    page.on("dialog", lambda dialog: dialog.accept())  # the "are you sure?" confirms
    yield page
    ctx.close()


@pytest.fixture(scope="module")
def bob(browser: Browser) -> Iterator[Page]:
    ctx = _context(browser)
    page = ctx.new_page()
    page.on("dialog", lambda dialog: dialog.accept())
    yield page
    ctx.close()


def _http(
    method: str, url: str, token: str | None = None, body: dict[str, Any] | None = None
) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, method=method, data=data)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, json.loads(raw) if raw else None


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def _register(page: Page, base: str, username: str) -> None:
    page.goto(f"{base}/register")
    page.fill("#f-username", username)
    page.fill("#f-email", f"{username}@example.com")
    page.fill("#f-password", PASSWORD)
    page.fill("#f-password_confirm", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/")


def _wait_done(page: Page) -> None:
    """The job panel says Done; fails at once with the form's message if the submit was refused."""
    page.wait_for_function(
        """() => ['completed', 'failed', 'cancelled'].includes(
                     document.getElementById('job-panel').dataset.status)
                 || [...document.querySelectorAll('[data-error-for]')].some(e => e.textContent)""",
        timeout=JOB_TIMEOUT_MS,
    )
    refused = [t for t in page.locator("[data-error-for]").all_inner_texts() if t.strip()]
    assert not refused, refused
    status = page.get_attribute("#job-panel", "data-status")
    assert status == "completed", page.inner_text("#job-panel")


def _loaded_width(img: Locator) -> int:
    """The image's natural width once it has loaded (0 if it failed to load)."""
    return int(
        img.evaluate(
            """img => img.complete ? img.naturalWidth : new Promise(done => {
                   img.addEventListener('load', () => done(img.naturalWidth));
                   img.addEventListener('error', () => done(0));
               })"""
        )
    )


def _shot(page: Page, world: World, name: str) -> None:
    """A full-page screenshot from the top (the sticky bar stays put), transitions settled."""
    page.evaluate("window.scrollTo(0, 0)")
    page.wait_for_timeout(400)
    page.screenshot(path=str(world.shots / f"{name}.png"), full_page=True)


def test_register_and_log_in(world: World, stack: Stack, ada: Page) -> None:
    base = world.base
    _register(ada, base, world.ada)
    expect(ada.locator(".account .who")).to_have_text(world.ada)
    ada.click("text=Log out")
    ada.wait_for_url(re.compile(r"/login"))
    ada.fill("#f-username", world.ada)
    ada.fill("#f-password", "not the password at all")
    ada.click("button[type=submit]")  # a wrong password is said on the form, which keeps the name
    expect(ada.locator(".alert, .error").first).to_be_visible()
    expect(ada.locator("#f-username")).to_have_value(world.ada)
    assert ada.url.endswith("/login")
    ada.fill("#f-username", world.ada)
    ada.fill("#f-password", PASSWORD)
    ada.click("button[type=submit]")
    ada.wait_for_url(f"{base}/")
    expect(ada.locator("h1")).to_have_text("Generate")


def test_generate_shows_progress_to_the_end(world: World, ada: Page) -> None:
    ada.goto(f"{world.base}/")
    # Record every step counter text the page shows while the job runs.
    ada.evaluate(
        """() => {
            window.__details = [];
            const el = document.getElementById('job-detail');
            new MutationObserver(() => window.__details.push(el.textContent))
                .observe(el, {childList: true, characterData: true, subtree: true});
        }"""
    )
    ada.fill("#f-prompt", world.prompt)
    ada.fill("#f-steps", str(STEPS))
    ada.fill("#f-seed", "1234")
    ada.click("#generate-btn")
    expect(ada.locator("#job-panel")).to_be_visible()
    _wait_done(ada)
    bar = ada.locator("#job-progress")
    assert bar.evaluate("el => [el.value, el.max]") == [STEPS, STEPS]
    expect(ada.locator("#job-detail")).to_contain_text(f"Step {STEPS} / {STEPS}")
    details: list[str] = ada.evaluate("() => window.__details")
    assert any(d.startswith("Step ") or "queue" in d or "worker" in d for d in details), details
    tile = ada.locator("#job-images a.tile").first
    expect(tile).to_be_visible()
    href = tile.get_attribute("href") or ""
    assert href.startswith("/images/")
    world.image_id = href.removeprefix("/images/")
    # The result image really loaded (not a broken image icon).
    assert _loaded_width(tile.locator("img")) > 0
    _shot(ada, world, "generate")


def test_open_image_and_make_it_public(world: World, ada: Page) -> None:
    ada.click("#job-images a.tile")
    ada.wait_for_url(f"{world.base}/images/{world.image_id}")
    expect(ada.locator("#visibility-badge")).to_have_text("private")
    expect(ada.locator(".params")).to_contain_text(world.prompt)
    ada.select_option("#f-visibility", "public")
    ada.fill("#f-title", "Lighthouse")
    ada.click("#settings-form button[type=submit]")
    expect(ada.locator("#visibility-badge")).to_have_text("public")
    expect(ada.locator("h1")).to_have_text("Lighthouse")
    # A share link is shown once, then revoked: it stops working.
    ada.click("#share-create")
    link = ada.locator("#share-url").input_value()
    assert "/s/" in link
    assert _status(f"{link}/file") == 200  # opens without an account
    ada.click("#share-revoke")
    expect(ada.locator(".notice")).to_contain_text("share link")
    assert _status(f"{link}/file") == 404
    _shot(ada, world, "image")


def test_second_account_sees_it_in_the_community(world: World, bob: Page) -> None:
    _register(bob, world.base, world.bob)
    bob.goto(f"{world.base}/community")
    tile = bob.locator(f'a.tile[href="/images/{world.image_id}"]')
    expect(tile).to_be_visible()
    _shot(bob, world, "community")
    tile.click()
    bob.wait_for_url(f"{world.base}/images/{world.image_id}")
    expect(bob.locator("#like-count")).to_have_text("0")
    bob.click("#like-btn")
    expect(bob.locator("#like-count")).to_have_text("1")
    expect(bob.locator("#like-btn")).to_have_attribute("aria-pressed", "true")
    # Not the owner: no settings form, but remix and report are offered.
    expect(bob.locator("#settings-form")).to_have_count(0)
    bob.click("details.report summary")
    # Over the limit (maxlength stops typing it, so the value is set directly): explained in place.
    bob.locator("#f-reason").evaluate(
        "el => { el.removeAttribute('maxlength'); el.value = 'x'.repeat(1001); }"
    )
    bob.click("details.report button[type=submit]")
    expect(bob.locator("#e-reason")).to_contain_text("1000")
    bob.fill("#f-reason", "Looks like spam")
    bob.click("details.report button[type=submit]")
    expect(bob.locator(".notice")).to_contain_text("moderator will look")
    bob.click("#remix-link")
    expect(bob.locator("#f-prompt")).to_have_value(world.prompt)
    expect(bob.locator("#f-seed")).to_have_value("1234")
    expect(bob.locator("#f-steps")).to_have_value(str(STEPS))
    # Search finds it by a word of its prompt.
    bob.fill("#top-search", world.prompt.split()[1])
    bob.press("#top-search", "Enter")
    expect(bob.locator(f'a.tile[href="/images/{world.image_id}"]')).to_be_visible()
    bob.goto(f"{world.base}/community?order=most_liked")
    expect(bob.locator(".tabs a[aria-current]")).to_have_text("Most liked")
    expect(bob.locator(f'a.tile[href="/images/{world.image_id}"]')).to_be_visible()


def test_anonymous_visitor(world: World, browser: Browser) -> None:
    """Public pages work without an account; acting on them asks to log in."""
    ctx = _context(browser)
    try:
        page = ctx.new_page()
        page.goto(f"{world.base}/images/{world.image_id}")
        expect(page.locator("h1")).to_have_text("Lighthouse")
        expect(page.locator("#like-btn")).to_have_count(0)
        expect(page.locator("#like-count")).to_have_text("1")
        expect(page.locator("#remix-link, #edit-link, #settings-form, details.report")).to_have_count(0)
        page.goto(f"{world.base}/search?q={world.prompt.split()[1]}")
        expect(page.locator(f'a.tile[href="/images/{world.image_id}"]')).to_be_visible()
        page.goto(f"{world.base}/search?q=%20")
        expect(page.locator(".grid a.tile")).to_have_count(0)
        page.goto(f"{world.base}/settings/keys")
        page.wait_for_url(re.compile(r"/login\?next=%2Fsettings%2Fkeys"))
        page.goto(f"{world.base}/edit?image={world.image_id}")
        page.wait_for_url(re.compile(r"/login\?next="))
    finally:
        ctx.close()


def test_admin_hides_and_unhides(world: World, stack: Stack, bob: Page, ada: Page) -> None:
    grant_admin(stack.database_url, world.bob)
    bob.goto(f"{world.base}/images/{world.image_id}")
    bob.click("#hide-btn")
    expect(bob.locator(".alert")).to_contain_text("moderator hid")
    bob.goto(f"{world.base}/community")
    expect(bob.locator(f'a.tile[href="/images/{world.image_id}"]')).to_have_count(0)
    # The owner still sees it, marked as hidden, and it is gone for anonymous visitors.
    ada.goto(f"{world.base}/images/{world.image_id}")
    expect(ada.locator(".alert")).to_contain_text("moderator hid")
    assert _http("GET", f"{world.base}/api/v1/images/{world.image_id}")[0] == 404
    bob.goto(f"{world.base}/images/{world.image_id}")
    bob.click("#hide-btn")
    expect(bob.locator(".alert")).to_have_count(0)
    assert _http("GET", f"{world.base}/api/v1/images/{world.image_id}")[0] == 200


def test_inpaint_with_a_drawn_mask(world: World, ada: Page) -> None:
    ada.goto(f"{world.base}/images/{world.image_id}")
    ada.click("#edit-link")
    ada.wait_for_url(re.compile(r"/edit\?image="))
    ada.click("label.segment:has(input[value=inpaint])")
    canvas = ada.locator("#mask-canvas")
    expect(canvas).to_be_visible()
    # Submitting without a mask is explained next to the canvas.
    ada.fill("#f-prompt", "a red door")
    ada.click("#edit-btn")
    expect(ada.locator('[data-error-for="mask"]')).to_contain_text("Paint over")
    box = canvas.bounding_box()
    assert box is not None and box["width"] > 50
    x0, y0 = box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.3
    ada.mouse.move(x0, y0)
    ada.mouse.down()
    for i in range(1, 11):
        ada.mouse.move(x0 + box["width"] * 0.04 * i, y0 + box["height"] * 0.03 * i)
    ada.mouse.up()
    painted = canvas.evaluate(
        "c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        " let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n / (d.length / 4); }"
    )
    assert 0.005 < painted < 0.5, painted
    ada.fill("#f-steps", str(STEPS))
    ada.click("#edit-btn")
    _wait_done(ada)
    tile = ada.locator("#job-images a.tile").first
    href = tile.get_attribute("href") or ""
    assert href.startswith("/images/") and href != f"/images/{world.image_id}"
    assert _loaded_width(tile.locator("img")) > 0
    _shot(ada, world, "edit")
    jobs = ada.request.get(f"{world.base}/api/v1/jobs?limit=1").json()
    assert jobs["items"][0]["kind"] == "inpaint"
    assert jobs["items"][0]["status"] == "completed"
    # The result records how it was made and links back; the gallery holds the two pictures, not
    # the uploaded mask.
    tile.click()
    expect(ada.locator(".params")).to_contain_text("Inpaint")
    expect(ada.locator("#source-link")).to_have_attribute("href", f"/images/{world.image_id}")
    ada.goto(f"{world.base}/gallery")
    expect(ada.locator(".grid a.tile")).to_have_count(2)


def test_api_keys_create_and_revoke(world: World, ada: Page) -> None:
    ada.goto(f"{world.base}/settings/keys")
    expect(ada.locator("#no-keys")).to_be_visible()
    ada.click("#create-key")  # no name: the error sits next to the field
    expect(ada.locator("#e-name")).to_be_visible()
    ada.fill("#f-name", "browser test key")
    ada.click("#create-key")
    secret = ada.locator("#new-key-secret").input_value()
    assert secret.startswith("esk_")
    status, me = _http("GET", f"{world.base}/api/v1/auth/me", secret)
    assert status == 200 and me["user"]["username"] == world.ada
    row = ada.locator("#keys-table tbody tr", has_text="browser test key")
    expect(row).to_have_count(1)
    _shot(ada, world, "keys")
    # The secret is shown once: a reload shows only the prefix.
    ada.goto(f"{world.base}/settings/keys")
    expect(ada.locator("#new-key-secret")).to_have_count(0)
    ada.locator("#keys-table tbody tr", has_text="browser test key").locator("button").click()
    expect(ada.locator(".notice")).to_contain_text("revoked")
    expect(ada.locator("#keys-table tbody tr", has_text="browser test key")).to_have_count(0)
    status, body = _http("GET", f"{world.base}/api/v1/auth/me", secret)
    assert status == 401, body


def test_change_password(world: World, ada: Page) -> None:
    ada.goto(f"{world.base}/settings/password")
    ada.fill("#f-current_password", "wrong password here")
    ada.fill("#f-new_password", NEW_PASSWORD)
    ada.fill("#f-new_password_confirm", NEW_PASSWORD)
    ada.click("#change-password")
    expect(ada.locator("#e-current_password")).to_be_visible()
    ada.fill("#f-current_password", PASSWORD)
    ada.fill("#f-new_password", NEW_PASSWORD)
    ada.fill("#f-new_password_confirm", NEW_PASSWORD)
    ada.click("#change-password")
    expect(ada.locator(".notice")).to_contain_text("password is changed")
    # This session survives; the old password is dead, the new one works.
    ada.goto(f"{world.base}/settings/keys")
    expect(ada.locator(".account .who")).to_have_text(world.ada)
    login = f"{world.base}/api/v1/auth/login"
    assert _http("POST", login, body={"username": world.ada, "password": PASSWORD})[0] == 401
    assert _http("POST", login, body={"username": world.ada, "password": NEW_PASSWORD})[0] == 200


def _token(base: str, username: str, password: str = PASSWORD) -> str:
    status, body = _http(
        "POST", f"{base}/api/v1/auth/login", body={"username": username, "password": password}
    )
    assert status == 200, body
    return str(body["token"])


def test_rest_search_like_report_hide_share(world: World) -> None:
    """The REST side of the image page's actions, as API clients use them."""
    base, image = world.base, f"{world.base}/api/v1/images/{world.image_id}"
    ada_token = _token(base, world.ada, NEW_PASSWORD)
    bob_token = _token(base, world.bob)
    word = world.prompt.split()[1]
    status, found = _http("GET", f"{base}/api/v1/search?q={word}")
    assert status == 200 and [i["id"] for i in found["items"]] == [world.image_id], found
    status, err = _http("GET", f"{base}/api/v1/search?q=%20")
    assert status == 400 and err["error"]["field"] == "q"
    assert _http("GET", f"{base}/api/v1/search?q={word}&mine=true")[0] == 401
    status, mine = _http("GET", f"{base}/api/v1/search?q={word}&mine=true", bob_token)
    assert status == 200 and mine["items"] == []

    status, liked = _http("POST", f"{image}/like", bob_token)
    assert status == 200 and liked["liked"] is True
    status, unliked = _http("DELETE", f"{image}/like", bob_token)
    assert status == 200 and unliked["likes"] == liked["likes"] - 1 and unliked["liked"] is False

    assert _http("POST", f"{image}/report", bob_token, {"reason": "looks like spam"}) == (
        202,
        {"status": "reported"},
    )
    status, err = _http("POST", f"{image}/report", bob_token, {"reason": "x" * 1001})
    assert status == 400 and err["error"]["field"] == "reason"

    status, err = _http("POST", f"{image}/hide", ada_token, {"hidden": True})
    assert status == 403, err  # only administrators moderate
    status, err = _http("POST", f"{image}/hide", bob_token, {"hidden": "yes"})
    assert status == 400 and err["error"]["field"] == "hidden"
    status, hidden = _http("POST", f"{image}/hide", bob_token, {"hidden": True})
    assert status == 200 and hidden["hidden"] is True
    assert _http("GET", image)[0] == 404
    status, shown = _http("POST", f"{image}/hide", bob_token, {"hidden": False})
    assert status == 200 and shown["hidden"] is False
    assert _http("GET", image)[0] == 200

    status, link = _http("POST", f"{image}/share", ada_token)
    assert status == 200 and _status(f"{link['url']}/file") == 200
    assert _http("DELETE", f"{image}/share?token=not-a-token", ada_token)[0] == 404
    assert _http("DELETE", f"{image}/share?token={link['token']}")[0] == 401
    assert _http("DELETE", f"{image}/share?token={link['token']}", ada_token) == (204, None)
    assert _status(f"{link['url']}/file") == 404


def test_rest_password_change_ends_other_sessions(world: World, bob: Page) -> None:
    base = world.base
    token = _token(base, world.bob)
    password = f"{base}/api/v1/auth/password"
    status, err = _http(
        "POST", password, token, {"current_password": "nope, not this", "new_password": NEW_PASSWORD}
    )
    assert status == 400 and err["error"]["field"] == "current_password"
    status, err = _http("POST", password, token, {"current_password": PASSWORD})
    assert status == 400 and err["error"]["field"] == "new_password"
    assert _http("POST", password, token, {"current_password": PASSWORD, "new_password": NEW_PASSWORD}) == (
        204,
        None,
    )
    assert _http("GET", f"{base}/api/v1/auth/me", token)[0] == 200  # the changing session stays
    bob.goto(f"{base}/settings/keys")  # the browser's session was another one: it ended
    bob.wait_for_url(re.compile(r"/login\?next="))
