"""Tessera's pages in a real browser: Debian's Chromium, headless, driven by Playwright.

Walks what a person does: an error page, the sign-in chooser (by keyboard only), the account
page, linking a second sign-in method, removing it, an existing-account sign-in that must be
linked (and the link flow it offers, confirmed on its page), connecting an account (its start page, the provider, the
connected page) and disconnecting it, filling the form of an env profile's link and reconnecting
it from the account page, an app's "choose an account" request and its sign-out form posted from
its own site, signing out, and a page that does not exist. Every page is
checked with axe-core for serious or critical violations at 1280 and 375 px, must load without a
Content-Security-Policy violation or script error, and is screenshotted at both widths into
SCREENSHOTS. Exits non-zero, saying why, at the first surprise; prints a JSON summary last.

Environment: TESSERA_URL, TESSERA_CLIENT_ID (a registered app redirecting to
https://app.example.com/callback, post-logout https://app.example.com/bye), TESSERA_PARTNER_ID
(a third-party app with the same redirect URI), SCREENSHOTS (a
folder), CHROMIUM (default /usr/bin/chromium).
"""

import json
import os
import re
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from playwright.sync_api import sync_playwright

BASE = os.environ["TESSERA_URL"].rstrip("/")
SHOTS = Path(os.environ["SCREENSHOTS"])
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
AXE = (Path(__file__).parent / "node_modules/axe-core/axe.min.js").read_text()
WIDTHS = {"desktop": (1280, 900), "phone": (375, 740)}
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

CLIENT = os.environ["TESSERA_CLIENT_ID"]
# A third-party app (it asks for consent), with the same redirect URI.
PARTNER = os.environ["TESSERA_PARTNER_ID"]
# An authorization request of the registered app (any 43-character PKCE challenge will do).
AUTHORIZE = (
    f"/oauth/authorize?response_type=code&client_id={CLIENT}"
    "&redirect_uri=https%3A%2F%2Fapp.example.com%2Fcallback&scope=openid&state=st-1"
    "&code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM&code_challenge_method=S256"
)
APP_PAGE = '<!doctype html><html lang="en"><title>App</title><main><h1>App</h1></main></html>'
# The app's sign-out form, on its own site.
APP_SIGN_OUT = f"""<!doctype html><html lang="en"><title>App</title><main>
<form method="post" action="{BASE}/oauth/logout">
<input type="hidden" name="client_id" value="{CLIENT}">
<input type="hidden" name="post_logout_redirect_uri" value="https://app.example.com/bye">
<input type="hidden" name="state" value="bye">
<button type="submit">Sign out of Tessera</button>
</form></main></html>"""

checked = []
problems = []  # CSP violations and script errors, gathered from every page


def fail(message):
    sys.exit(f"browser test: {message}")


def expect(condition, message):
    if not condition:
        fail(message)


def check_page(page, name, title_part):
    """axe at both widths, no CSP violation, a title and a <main>, the security headers seen."""
    expect(title_part in page.title(), f"{name}: title {page.title()!r} lacks {title_part!r}")
    expect(page.locator("main").count() == 1, f"{name}: one <main>")
    expect(page.locator("html").get_attribute("lang") == "en", f"{name}: lang")
    for label, (width, height) in WIDTHS.items():
        page.set_viewport_size({"width": width, "height": height})
        # Injected through the DevTools protocol: the page's own policy forbids inline script.
        page.evaluate(AXE)
        result = page.evaluate(
            """async () => {
                const r = await axe.run(document, {resultTypes: ['violations']});
                return r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
                    nodes: v.nodes.map(n => n.target.join(' ')).slice(0, 5)}));
            }"""
        )
        bad = [v for v in result if v["impact"] in ("serious", "critical")]
        expect(not bad, f"{name} at {width}px: axe found {json.dumps(bad, indent=1)}")
        # Nothing scrolls sideways on a phone.
        overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        expect(overflow <= 0, f"{name} at {width}px scrolls sideways by {overflow}px")
        page.screenshot(path=str(SHOTS / f"{name}-{label}.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})
    expect(not problems, f"{name}: {problems}")
    checked.append(name)


def goto(page, path):
    response = page.goto(BASE + path)
    expect(response is not None, f"no response for {path}")
    return response


def headers_of(response, name):
    headers = response.all_headers()
    csp = headers.get("content-security-policy", "")
    expect("frame-ancestors 'none'" in csp and "unsafe-inline" not in csp, f"{name}: CSP {csp!r}")
    expect(headers.get("x-content-type-options") == "nosniff", f"{name}: nosniff")
    expect(headers.get("referrer-policy") == "no-referrer", f"{name}: referrer policy")
    expect(headers.get("cache-control") == "no-store", f"{name}: cache-control")


def watch(page):
    """Gathers the page's CSP violations and script errors into `problems`."""
    page.on(
        "console",
        lambda m: problems.append(m.text)
        if m.type == "error" and ("Content Security Policy" in m.text or "Refused" in m.text)
        else None,
    )
    page.on("pageerror", lambda e: problems.append(str(e)))


def heading(page):
    return page.get_by_role("heading", level=1).inner_text()


def identities(page):
    return page.locator("section[aria-labelledby=identities] ul.items > li").count()


def main():
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        watch(page)

        # An error page: a provider that does not exist.
        response = goto(page, "/auth/login?provider=nope")
        expect(response.status == 404, f"unknown provider: {response.status}")
        headers_of(response, "error-unknown-provider")
        expect(page.get_by_role("heading", level=1).inner_text() == "That sign-in method is not available", "title")
        check_page(page, "error-unknown-provider", "not available")
        page.get_by_role("link", name="Choose how to sign in").click()
        page.wait_for_url(re.compile(r"/login$"))

        # The chooser, then a sign-in by keyboard only.
        response = goto(page, "/login")
        headers_of(response, "login")
        check_page(page, "login", "Sign in")
        page.keyboard.press("Tab")
        expect(page.evaluate("document.activeElement.textContent") == "Skip to main content", "skip link first")
        for _ in range(10):
            page.keyboard.press("Tab")
            if "Continue with Local" in page.evaluate("document.activeElement.textContent"):
                break
        else:
            fail("Tab never reached the Local button")
        outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
        expect(outline != "none", "the focused button shows a focus ring")
        page.keyboard.press("Enter")
        page.wait_for_url(re.compile(r"/account$"))

        # The account page.
        response = goto(page, "/account")
        headers_of(response, "account")
        expect(page.get_by_text("ada@example.com").count() >= 1, "the account shows the email")
        expect(identities(page) == 1, "one sign-in method")
        expect(page.get_by_text("cannot be removed").count() == 1, "the last one cannot be removed")
        check_page(page, "account", "Your account")

        # Link a second sign-in method, then remove it.
        page.get_by_role("link", name="Link Second").click()
        page.wait_for_url(re.compile(r"/account\?done=linked$"))
        expect(identities(page) == 2, "two sign-in methods after linking")
        expect(page.get_by_role("status").inner_text().startswith("The sign-in method is linked"), "notice")
        check_page(page, "account-linked", "Your account")
        page.get_by_role("button", name="Remove Second sign-in").click()
        # It asks first, on a page of its own whose button says the same.
        page.wait_for_load_state()
        check_page(page, "confirm-unlink", "Remove your Second sign-in?")
        page.get_by_role("button", name="Remove Second sign-in").click()
        page.wait_for_url(re.compile(r"/account\?done=unlinked$"))
        expect(identities(page) == 1, "one sign-in method after removing")
        check_page(page, "account-unlinked", "Your account")

        # An app asks the signed-in person to choose an account (prompt=select_account): going on
        # as Ada lands back at the app with a code. The app's pages are served by the route below.
        app_pages = []

        def app(route):
            app_pages.append(route.request.url)
            html = APP_SIGN_OUT if route.request.url.endswith("/signout") else APP_PAGE
            route.fulfill(status=200, content_type="text/html", body=html)

        page.route(re.compile(r"^https?://app\.example\.(com|test)/"), app)
        goto(page, AUTHORIZE + "&prompt=select_account")
        expect(heading(page) == "Choose an account", f"the account choice: {heading(page)!r}")
        check_page(page, "select-account", "Choose an account")
        page.get_by_role("link", name=re.compile(r"^Continue as")).click()
        page.wait_for_url(re.compile(r"^https://app\.example\.com/callback\?"))
        expect("code=" in page.url and "state=st-1" in page.url, f"back at the app with a code: {page.url}")

        # The app's own sign-out form, on its site, posts without the (SameSite=Lax) session
        # cookie: Tessera's page continues it from its own origin, which carries the cookie; then
        # the confirmation (no id_token_hint here), and back to the app's post-logout page.
        page.goto("http://app.example.test/signout")
        page.get_by_role("button", name="Sign out of Tessera").click()
        page.wait_for_url(re.compile(r"/oauth/logout$"))
        expect(heading(page) == "Continue signing out", f"the continue page: {heading(page)!r}")
        check_page(page, "logout-continue", "Sign out")
        page.get_by_role("button", name="Continue").click()
        expect(heading(page) == "Sign out?", f"the confirmation: {heading(page)!r}")
        page.get_by_role("button", name="Sign out").click()
        page.wait_for_url(re.compile(r"^https://app\.example\.com/bye\?state=bye$"))
        goto(page, "/account")
        page.wait_for_url(re.compile(r"/login\?return_to=%2Faccount$"))
        expect(any(u.endswith("/signout") for u in app_pages), "the app's page was served")

        # Sign in again, for the rest of the walk.
        goto(page, "/auth/login?provider=local")
        page.wait_for_url(re.compile(r"/account$"))

        # A third-party app asks for consent: the page says what it may do, in words, and how
        # long it waits; denied, the app is told so.
        asked = AUTHORIZE.replace(f"client_id={CLIENT}", f"client_id={PARTNER}")
        asked = asked.replace("scope=openid", "scope=openid%20email")
        goto(page, asked)
        expect(heading(page) == "Allow Pages partner to use your account?", f"the consent page: {heading(page)!r}")
        expect(page.get_by_text("see your email address").count() == 1, "the scopes in words")
        expect(page.get_by_text("waits up to 10 minutes for your answer").count() == 1, "the time it waits")
        check_page(page, "consent", "Allow Pages partner?")
        page.get_by_role("button", name="Deny").click()
        page.wait_for_url(re.compile(r"^https://app\.example\.com/callback\?"))
        expect("error=access_denied" in page.url, f"the app is told: {page.url}")
        goto(page, "/account")

        # Sign out: a page that confirms, then the signed-out page.
        page.get_by_role("link", name="Sign out").click()
        page.wait_for_url(re.compile(r"/auth/logout$"))
        check_page(page, "logout", "Sign out")
        page.get_by_role("button", name="Sign out").click()
        expect(page.get_by_role("heading", level=1).inner_text() == "You are signed out", "signed out")
        check_page(page, "signed-out", "signed out")
        goto(page, "/account")
        page.wait_for_url(re.compile(r"/login\?return_to=%2Faccount$"))

        # The second provider's account has the same email: it must be linked from the account.
        goto(page, "/login")
        page.get_by_role("link", name="Continue with Second").click()
        page.wait_for_load_state()
        expect(page.get_by_role("heading", level=1).inner_text() == "You already have an account", "link required")
        check_page(page, "error-link-required", "already have an account")
        page.get_by_role("link", name="Sign in and link your account").click()
        page.wait_for_url(re.compile(r"/login\?return_to="))
        page.get_by_role("link", name="Continue with Local").click()
        # The sign-in comes back to the link through the provider's redirects (another site):
        # the browser is asked before a link starts.
        page.wait_for_url(re.compile(r"/auth/link\?provider=second$"))
        expect(page.get_by_role("heading", level=1).inner_text() == "Link Second?", "the link is confirmed first")
        check_page(page, "link-confirm", "Link a sign-in method")
        page.get_by_role("button", name="Link Second").click()
        page.wait_for_url(re.compile(r"/account$"))
        expect(identities(page) == 2, "signing in and following the link linked the second method")

        # A connected account: made through the API, connected in the browser, disconnected.
        me = context.request.get(BASE + "/v1/me").json()
        team = me["teams"][0]["id"]
        created = context.request.post(
            BASE + f"/v1/teams/{team}/auth-profiles",
            data={
                "connector_key": "issues",
                "profile_kind": "oauth_account",
                "provider": "local",
                "display_name": "My Issues",
                "scopes": ["openid", "issues:read"],
            },
        )
        expect(created.status == 201, f"creating a profile: {created.status} {created.text()}")
        # The start page names the connector, the provider and the permissions, and asks first.
        response = page.goto(created.json()["connect_url"])
        headers_of(response, "connect-start")
        # (The heading's text starts with the provider's monogram, hidden from screen readers.)
        title = page.get_by_role("heading", level=1, name="Connect Issue tracker", exact=True)
        expect(title.count() == 1, f"connect start page: {page.get_by_role('heading', level=1).inner_text()!r}")
        expect(page.get_by_text("issues:read").count() == 1, "the permissions asked for")
        check_page(page, "connect-start", "Connect Issue tracker")
        # By keyboard only: Tab to the button, Enter.
        for _ in range(15):
            page.keyboard.press("Tab")
            if page.evaluate("document.activeElement.textContent") == "Continue to Local":
                break
        else:
            fail("Tab never reached Continue to Local")
        page.keyboard.press("Enter")
        # A key press does not wait for the navigation it starts: wait until the browser has left
        # the start page (the form's POST, the provider, the callback), then for the page's load.
        page.wait_for_url(re.compile(r"/account\?done=connected$"))
        page.wait_for_load_state()
        expect(page.get_by_text("The account is connected.").count() == 1, "says it is done")
        expect(page.get_by_text("issues:read").count() == 1, "the scopes are listed")
        check_page(page, "account-connected", "Your account")
        page.get_by_role("button", name="Disconnect My Issues").click()
        # It asks first, on a page of its own.
        page.wait_for_load_state()
        check_page(page, "confirm-disconnect", "Disconnect My Issues?")
        expect(page.get_by_text("My Issues").count() >= 1, "names what it ends")
        page.get_by_role("button", name="Disconnect", exact=True).click()
        page.wait_for_url(re.compile(r"/account\?done=revoked$"))
        expect(page.get_by_text("My Issues").count() == 0, "disconnected")

        # An env profile: its link opens a form; filled and saved, the account is connected, and
        # the account page offers a fresh form to reconnect it.
        created = context.request.post(
            BASE + f"/v1/teams/{team}/auth-profiles",
            data={"connector_key": "openai", "profile_kind": "env", "display_name": "OpenAI key", "slug": "ai"},
        )
        expect(created.status == 201, f"creating an env profile: {created.status} {created.text()}")
        response = page.goto(created.json()["connect_url"])
        headers_of(response, "env-form")
        expect(page.get_by_role("heading", level=1, name="Connect OpenAI", exact=True).count() == 1, "env form")
        check_page(page, "env-form", "Connect OpenAI")
        page.get_by_label("API key").fill("sk-a-value-typed-in-the-browser")
        page.get_by_label("Organisation (optional)").fill("org-acme")
        page.get_by_role("button", name="Save").click()
        page.wait_for_url(re.compile(r"/account\?done=connected$"))
        page.wait_for_load_state()
        expect(page.get_by_text("The account is connected.").count() == 1, "env connected")
        # Reloading the page replays nothing: it is the account page.
        page.reload()
        expect(page.get_by_text("The account is connected.").count() == 1, "reloaded")
        check_page(page, "env-connected", "Your account")
        page.get_by_role("button", name="Reconnect OpenAI key").click()
        page.wait_for_url(re.compile(r"/connect/[^/]+/env$"))
        expect(page.get_by_role("heading", level=1, name="Connect OpenAI", exact=True).count() == 1, "fresh form")

        # Connect links that cannot be used: an unknown (or used) one, and one opened in a browser
        # that is not signed in, which offers to sign in and come back.
        response = goto(page, "/connect/no-such-link/oauth/start")
        expect(response.status == 404 and heading(page) == "This link was already used or has expired", f"expired: {response.status}")
        check_page(page, "error-connect-link-expired", "already used or has expired")
        created = context.request.post(
            BASE + f"/v1/teams/{team}/auth-profiles",
            data={"connector_key": "issues", "profile_kind": "oauth_account", "provider": "local",
                  "display_name": "Later", "slug": "later"},
        )
        expect(created.status == 201, f"creating a profile: {created.status} {created.text()}")
        link = created.json()["connect_url"]
        elsewhere = browser.new_context(viewport={"width": 1280, "height": 900})
        other = elsewhere.new_page()
        watch(other)
        response = other.goto(link)
        expect(response.status == 401 and heading(other) == "Please sign in", f"signed out: {response.status}")
        expect(other.get_by_role("link", name="Sign in").count() == 1, "a way to sign in")
        check_page(other, "error-connect-signed-out", "Please sign in")
        elsewhere.close()
        # The start page's Cancel goes back to the account page.
        page.goto(link)
        page.get_by_role("link", name="Cancel").click()
        page.wait_for_url(re.compile(r"/account$"))

        # A sign-in cancelled at the provider offers to try again.
        started = context.request.get(BASE + "/auth/login?provider=local", max_redirects=0)
        expect(started.status == 303, f"a sign-in starts: {started.status}")
        state = parse_qs(urlparse(started.headers["location"]).query)["state"][0]
        response = goto(page, f"/auth/callback/local?error=access_denied&state={state}")
        expect(response.status == 400 and heading(page) == "Sign-in was cancelled", f"cancelled: {response.status}")
        expect(page.get_by_role("link", name="Try again").count() == 1, "try again")
        check_page(page, "error-sign-in-cancelled", "cancelled")

        # Email discovery without a team claim goes to the chooser with a notice. An address
        # with a letter beyond ASCII before the @ (which Tessera accepts) is sent: the browser's
        # own check of type=email would refuse it.
        goto(page, "/login")
        page.get_by_label("Work email").fill("jörg@nowhere.example")
        page.get_by_role("button", name="Continue with email").click()
        expect(page.get_by_text("has no team sign-in of its own").count() == 1, "discovery notice")
        check_page(page, "login-discovery", "Sign in")
        # Something that is no address: said in the title, at the top and at the field.
        goto(page, "/login")
        page.get_by_label("Work email").fill("not an address")
        page.get_by_role("button", name="Continue with email").click()
        page.wait_for_load_state()
        expect(page.get_by_label("Work email").get_attribute("aria-invalid") == "true", "the field is marked")
        check_page(page, "login-error", "Error: Sign in")

        # A page that does not exist.
        response = goto(page, "/no/such/page")
        expect(response.status == 404, "404")
        check_page(page, "error-not-found", "Page not found")
        # A form posted without the session's CSRF token is refused with a page.
        goto(page, "/account")
        page.evaluate("document.querySelectorAll('input[name=csrf]').forEach(e => e.remove())")
        page.get_by_role("button", name="Remove Second sign-in").click()
        page.wait_for_load_state()
        expect(page.get_by_role("heading", level=1).inner_text() == "That form has expired", "CSRF refused")
        check_page(page, "error-csrf", "form has expired")

        browser.close()
    print(json.dumps({"pages": checked, "screenshots": str(SHOTS)}))


main()
