"""The web pages in a real browser: Debian's headless Chromium against the app on a loopback port.

A person logs in, gets recommendations, sees an invalid age explained inline, rates two
movies (one with the mouse, one with the keyboard) and the feedback rows are in the
database; an admin opens the dashboard and its charts are drawn. Nothing the pages load
may come from outside the test server. Screenshots go to test-artifacts/screenshots/.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from app.recommender.bundle import RecommendQuery
from tests.e2e.browser import LiveServer, browser_page, screenshot
from tests.helpers import ADMIN_PASSWORD, SESSION_PASSWORD, database_down, sqlalchemy_url

pytestmark = pytest.mark.browser

COOKIE = "access_token_cookie"
CHARTS = ("chart-history", "chart-feedback", "chart-like")


def _log_in(page: Any, password: str, expect_path: str = "/ui") -> None:
    page.goto("/ui/login")
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"**{expect_path}")


def _fill_profile(page: Any) -> None:
    """The recommendation form's profile, filled in as a person would (a woman of 34, an engineer)."""
    page.get_by_label("Age").fill("34")
    page.get_by_label("Gender").select_option("F")
    page.get_by_label("Occupation").select_option("engineer")


def _open_a_list(page: Any) -> None:
    """Ask for a list with that profile and wait for the list's own page."""
    _fill_profile(page)
    page.get_by_role("button", name="Recommend").click()
    page.wait_for_url("**/ui/recommendations/**")


def _unlabelled_controls(page: Any) -> list[str]:
    """Form controls without an accessible label (every visible control must have one)."""
    return page.evaluate(
        """() => Array.from(document.querySelectorAll('input:not([type=hidden]), select, textarea'))
              .filter(el => el.labels.length === 0 && !el.getAttribute('aria-label'))
              .map(el => el.outerHTML)"""
    )


def test_a_person_gets_recommendations_and_rates_two_movies(make_app: Callable[..., Any]) -> None:
    app = make_app()
    db = app.extensions["movierec"].db
    with LiveServer(app) as server, browser_page(server.url) as (page, requests):
        page.goto("/ui")
        page.wait_for_url("**/ui/login?**")  # not logged in: sent to the login page
        assert "Please log in" in page.locator("#login-notice").inner_text()
        page.get_by_label("Password").fill(SESSION_PASSWORD)
        page.get_by_role("button", name="Log in").click()
        page.wait_for_url("**/ui")
        assert _unlabelled_controls(page) == []

        # an invalid age is explained next to the field, in the API's own words
        page.get_by_label("Age").fill("200")
        page.get_by_label("Gender").select_option("F")
        page.get_by_label("Occupation").select_option("engineer")
        page.get_by_label("Number of recommendations").fill("5")
        page.get_by_role("button", name="Recommend").click()
        error = page.locator("#error-age")
        error.wait_for()
        assert "must be an integer between 1 and 120" in error.inner_text()
        assert page.get_by_label("Age").get_attribute("aria-invalid") == "true"
        assert page.locator("#error-summary").get_attribute("role") == "alert"
        screenshot(page, "ui-invalid-age")

        page.get_by_label("Age").fill("34")
        page.get_by_role("button", name="Recommend").click()
        titles = page.locator(".movie-title")
        titles.first.wait_for()
        shown = titles.all_inner_texts()
        assert len(shown) == 5
        assert _unlabelled_controls(page) == []
        screenshot(page, "ui-recommendations")

        # first movie: four stars with the mouse (each star is two halves: the 8th half is 4)
        first = page.locator("li.result").nth(0)
        first.locator("label.star").nth(7).click()
        first.get_by_role("button", name="Save rating").click()
        page.locator("#saved-notice").wait_for()
        assert shown[0] in page.locator("#saved-notice").inner_text()
        assert "Your rating: 4 of 5" in page.locator("li.result").nth(0).inner_text()

        # second movie: two stars with the keyboard only (radio group: arrows move by half a star,
        # Tab to the button)
        second = page.locator("li.result").nth(1)
        second.locator("input.star-input").first.focus()
        page.keyboard.press("Space")
        for _ in range(3):
            page.keyboard.press("ArrowRight")
        page.keyboard.press("Tab")
        page.keyboard.press("Enter")
        page.wait_for_url("**saved=1**")
        assert "Your rating: 2 of 5" in page.locator("li.result").nth(1).inner_text()
        screenshot(page, "ui-rated")

        rows = {row.title: row.score for row in db.feedback_rows()}
        assert rows == {shown[0]: 4.0, shown[1]: 2.0}

        # a narrow phone screen: the list still fits without horizontal scrolling
        page.set_viewport_size({"width": 375, "height": 800})
        page.reload()
        page.locator(".movie-title").first.wait_for()
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        screenshot(page, "ui-rated-mobile")

        page.get_by_role("button", name="Log out").click()
        page.wait_for_url("**/ui/login?**")
        assert "logged out" in page.locator("#login-notice").inner_text()
        page.goto("/ui")
        page.wait_for_url("**/ui/login?**")

    assert requests.blocked == []
    assert all(url.startswith(server.url + "/") for url in requests.seen)


def _focused(page: Any, expected: str) -> str:
    """The focused element's id once it is ``expected`` (the browser applies autofocus at its next
    rendering, after the load event), else after 60 s whatever has the focus: a wait that ends as
    soon as the focus is there, long for a browser on a loaded machine, not a speed under test."""
    return str(
        page.evaluate(
            """async (expected) => {
                 const focused = () => document.activeElement.id || document.activeElement.tagName;
                 for (let i = 0; i < 1200 && focused() !== expected; i++) {
                   await new Promise((resolve) => setTimeout(resolve, 50));
                 }
                 return focused();
               }""",
            expected,
        )
    )


def test_a_refused_form_puts_the_keyboard_on_its_error_summary(make_app: Callable[..., Any]) -> None:
    """After a form comes back with errors, focus starts on the list of what to correct (whose
    links lead to each field), not at the top of the page behind the header's links."""
    app = make_app()
    with LiveServer(app) as server, browser_page(server.url) as (page, _requests):
        _log_in(page, SESSION_PASSWORD)
        page.get_by_label("Age").fill("200")
        page.get_by_role("button", name="Recommend").click()
        page.locator("#error-summary").wait_for()
        assert _focused(page, "error-summary") == "error-summary"
        page.keyboard.press("Tab")
        page.keyboard.press("Enter")  # the summary's first link: to the age field
        assert _focused(page, "field-age") == "field-age"

        _open_a_list(page)
        first = page.locator("li.result").nth(0)
        first.locator("input.star-input").nth(4).evaluate(
            "input => { input.value = '9'; input.checked = true; }"
        )
        first.get_by_role("button", name="Save rating").click()
        page.wait_for_url("**/ui/feedback")
        assert _focused(page, "error-summary") == "error-summary"
        assert app.extensions["movierec"].db.feedback_rows() == []

        # the login form's one field keeps the focus itself
        page.get_by_role("button", name="Log out").click()
        page.wait_for_url("**/ui/login?**")
        page.get_by_role("button", name="Log in").click()
        page.locator("#error-summary").wait_for()
        assert _focused(page, "field-session_password") == "field-session_password"


def test_going_back_to_a_refused_login_sends_no_password_again(make_app: Callable[..., Any]) -> None:
    """A wrong password was answered with the form at the post's address: Back to that page from
    the next one (or a reload of it) made Chromium post the password again, unasked, each wrong
    one a try against the address's login limit. The refusal is a redirect to the login page, so
    Back and reload show that page again and post nothing."""
    app = make_app()
    counted = _HeldPosts(app)
    with LiveServer(counted) as server, browser_page(server.url) as (page, _requests):
        page.goto("/ui/dashboard?bucket=hour")  # the way back (its query too) a refused login keeps
        page.wait_for_url("**/ui/login?**")
        page.get_by_label("Password").fill("a-wrong-guess")
        page.get_by_role("button", name="Log in").click()
        page.wait_for_url("**error=wrong**")
        assert "a-wrong-guess" not in page.url
        assert "invalid session password" in page.locator("#error-session_password").inner_text()
        page.reload()
        page.locator("#error-session_password").wait_for()
        page.get_by_label("Password").fill(ADMIN_PASSWORD)
        page.get_by_role("button", name="Log in").click()
        page.wait_for_url("**/ui/dashboard?bucket=hour")
        assert page.get_by_label("Group by").input_value() == "hour"
        page.go_back()
        page.wait_for_url("**error=wrong**")
        page.locator("#error-session_password").wait_for()
        assert counted.posts == {"/ui/login": 2}  # the wrong password and the right one, once each


@pytest.mark.parametrize("javascript", [True, False], ids=["scripts", "no-scripts"])
def test_a_form_given_back_for_later_is_not_sent_again_by_reload_or_back(
    make_app: Callable[..., Any], tmp_path: Path, model_store: Path, javascript: bool
) -> None:
    """With no model loaded the form came back as the post's own answer (503): reloading that
    page, or going Back to it from the list asked for next, made Chromium post the form again,
    unasked, and once a model was loaded that logged one more recommendation each time. The
    answer is a redirect to the form's own address, what was typed in its query: the page shows
    the form filled in, with scripts or without, and reloading it or going back to it posts nothing."""
    app = make_app(model_path=tmp_path / "empty")
    counted = _HeldPosts(app)
    typed = {"Age": "34", "Gender": "F", "Occupation": "engineer", "Number of recommendations": "7"}
    with LiveServer(counted) as server, browser_page(server.url, javascript=javascript) as (page, _requests):
        _log_in(page, SESSION_PASSWORD)
        page.get_by_label("Age").fill(typed["Age"])
        page.get_by_label("Gender").select_option(typed["Gender"])
        page.get_by_label("Occupation").select_option(typed["Occupation"])
        page.get_by_label("Number of recommendations").fill(typed["Number of recommendations"])
        page.get_by_role("button", name="Recommend").click()
        page.locator("#form-notice").wait_for()
        assert "nothing was logged" in page.locator("#form-notice").inner_text()
        assert _profile_fields(page) == typed

        app.extensions["movierec"].models.load(model_store)
        page.reload()  # waits for the page's load
        assert counted.posts == {"/ui/login": 1, "/ui/recommend": 1}
        assert _logged_requests(app) == 0
        assert "nothing was logged" in page.locator("#form-notice").inner_text()
        assert _profile_fields(page) == typed

        page.get_by_role("button", name="Recommend").click()
        page.wait_for_url("**/ui/recommendations/**")
        assert len(page.locator(".movie-title").all_inner_texts()) == 7
        page.go_back()
        assert counted.posts == {"/ui/login": 1, "/ui/recommend": 2}
        assert _logged_requests(app) == 1
        assert _profile_fields(page) == typed


def test_a_form_refused_for_an_unknown_user_is_not_sent_again_by_reload_or_back(
    make_app: Callable[..., Any],
) -> None:
    """A user id the model did not know was answered 400 with the form at the post's address:
    reloading it, or going Back to it from the list asked for next, made Chromium post it again,
    and once a later model knew the user that logged a recommendation nobody asked for. It is a
    redirect to the form's own address: the field is marked there (the keyboard on the summary),
    and reloading it or going back to it posts nothing."""
    app = make_app()
    counted = _HeldPosts(app)
    with LiveServer(counted) as server, browser_page(server.url) as (page, _requests):
        _log_in(page, SESSION_PASSWORD)
        page.get_by_label("Known user id").fill("999999")
        page.get_by_role("button", name="Recommend").click()
        page.wait_for_url("**unsent=unknown_user**")
        assert _focused(page, "error-summary") == "error-summary"
        assert "was not known to the model" in page.locator("#error-user_id").inner_text()
        page.reload()
        page.locator("#error-user_id").wait_for()
        assert page.get_by_label("Known user id").input_value() == "999999"
        assert counted.posts == {"/ui/login": 1, "/ui/recommend": 1}

        page.get_by_label("Known user id").fill("")
        _open_a_list(page)
        page.go_back()
        page.locator("#error-user_id").wait_for()
        assert counted.posts == {"/ui/login": 1, "/ui/recommend": 2}
        assert _logged_requests(app) == 1


def test_going_back_to_a_rating_not_saved_does_not_send_it_again(
    make_app: Callable[..., Any], postgres_url: str
) -> None:
    """A rating the service could not store (the database down, the list not known to the worker
    that took it) was answered with the "nothing was saved" page at the post's address. The person
    followed its link to the list and rated the movie again, differently, once the database was
    back; Back to that page then made Chromium post the first rating again, unasked, and it
    replaced the newer one (a movie of a list has one score, the last sent). The answer is a
    redirect to a page of its own: going back to it posts nothing."""
    app = make_app(database_url=sqlalchemy_url(postgres_url))
    db = app.extensions["movierec"].db
    counted = _HeldPosts(app)
    with LiveServer(counted) as server, browser_page(server.url) as (page, _requests):
        _log_in(page, SESSION_PASSWORD)
        _open_a_list(page)
        title = page.locator(".movie-title").first.inner_text()
        app.extensions["movierec"].recommendations.request_log.flush()  # the list: only in the database
        first = page.locator("li.result").nth(0)
        first.locator("label.star").nth(7).click()  # 4 stars
        with database_down(app):
            first.get_by_role("button", name="Save rating").click()
            page.get_by_role("link", name="Back to the list").wait_for()
        assert "not saved" in page.locator("main").inner_text()
        assert db.feedback_rows() == []

        page.get_by_role("link", name="Back to the list").click()
        page.wait_for_url("**/ui/recommendations/**")
        first = page.locator("li.result").nth(0)
        assert first.locator("input.star-input:checked").get_attribute("value") == "4"  # given back
        assert "not saved" in first.locator("#form-restored").inner_text()
        first.locator("label.star").nth(3).click()  # changed their mind: 2 stars
        first.get_by_role("button", name="Save rating").click()
        page.wait_for_url("**saved=0**")
        assert {row.title: row.score for row in db.feedback_rows()} == {title: 2.0}

        page.go_back()  # the list, opened from the link
        page.go_back()  # what answered the rating not saved
        assert {row.title: row.score for row in db.feedback_rows()} == {title: 2.0}
        assert counted.posts["/ui/feedback"] == 2
        assert "not saved" in page.locator("main").inner_text()


def _logged_requests(app: Any) -> int:
    """Recommendation rows logged by ``app`` (its write-behind log flushed first)."""
    from sqlalchemy import func, select

    from app.storage.models import RecommendationRequest

    app.extensions["movierec"].recommendations.request_log.flush()
    with app.extensions["movierec"].db.session() as session:
        return int(session.scalar(select(func.count()).select_from(RecommendationRequest)))


def _end_the_session(page: Any, app: Any, server: LiveServer, expired: bool = True) -> None:
    """Swap the browser's session for the same one expired (``expired``: as after a long pause on
    a form, whose CSRF value is still the session's), or for a new live one, as after logging in
    again in another tab (the forms shown before then carry the old session's CSRF value)."""
    from flask_jwt_extended import create_access_token, decode_token

    from app.api.auth import token_claims

    (cookie,) = [c for c in page.context.cookies() if c["name"] == COOKIE]
    with app.app_context():
        claims = token_claims("client")
        if expired:
            claims["csrf"] = decode_token(cookie["value"])["csrf"]
        token = create_access_token(
            "client", additional_claims=claims, expires_delta=timedelta(seconds=-5 if expired else 600)
        )
    page.context.clear_cookies()
    page.context.add_cookies([{**cookie, "value": token}])


def _profile_fields(page: Any) -> dict[str, str]:
    return {
        label: page.get_by_label(label).input_value()
        for label in ("Age", "Gender", "Occupation", "Number of recommendations")
    }


def test_a_form_sent_after_the_session_ended_is_filled_in_again_after_logging_in(
    make_app: Callable[..., Any],
) -> None:
    """A form sent once the session had expired led to the login page and, after it, to an empty
    form (the profile typed, the stars chosen: lost). It is nothing saved still, but after logging
    in again the form is shown filled in as it was sent, said so, to be sent once more. The values
    stay in the browser's tab (sessionStorage, never the address or the server), for the next page
    only; a form refused as out of date (a login in another tab since) is given back the same way."""
    app = make_app()
    db = app.extensions["movierec"].db
    typed = {"Age": "34", "Gender": "F", "Occupation": "engineer", "Number of recommendations": "7"}
    with LiveServer(app) as server, browser_page(server.url) as (page, _requests):
        _log_in(page, SESSION_PASSWORD)
        page.get_by_label("Age").fill(typed["Age"])
        page.get_by_label("Gender").select_option(typed["Gender"])
        page.get_by_label("Occupation").select_option(typed["Occupation"])
        page.get_by_label("Number of recommendations").fill(typed["Number of recommendations"])
        _end_the_session(page, app, server)
        page.get_by_role("button", name="Recommend").click()
        page.wait_for_url("**/ui/login?**")
        assert "expired" in page.locator("#login-notice").inner_text()
        page.get_by_label("Password").fill(SESSION_PASSWORD)
        page.get_by_role("button", name="Log in").click()
        page.wait_for_url("**/ui")
        assert _profile_fields(page) == typed
        assert "not saved" in page.locator("#form-restored").inner_text()
        assert _focused(page, "form-restored") == "form-restored"
        screenshot(page, "ui-form-restored")
        page.get_by_role("button", name="Recommend").click()
        page.wait_for_url("**/ui/recommendations/**")
        titles = page.locator(".movie-title").all_inner_texts()
        assert len(titles) == 7

        # a rating chosen on the list: three and a half stars for the second movie
        second = page.locator("li.result").nth(1)
        second.locator("label.star").nth(6).click()
        _end_the_session(page, app, server)
        second.get_by_role("button", name="Save rating").click()
        page.wait_for_url("**/ui/login?**")
        page.get_by_label("Password").fill(SESSION_PASSWORD)
        page.get_by_role("button", name="Log in").click()
        page.wait_for_url("**/ui/recommendations/**")
        assert db.feedback_rows() == []
        assert page.locator("input.star-input:checked").count() == 1
        second = page.locator("li.result").nth(1)
        assert second.locator("input.star-input:checked").get_attribute("value") == "3.5"
        assert "not saved" in second.locator("#form-restored").inner_text()
        second.get_by_role("button", name="Save rating").click()
        page.wait_for_url("**saved=1**")
        assert {row.title: row.score for row in db.feedback_rows()} == {titles[1]: 3.5}

        # given back once: the form asked for again is empty
        page.get_by_role("link", name="Ask again").click()
        page.wait_for_url("**/ui")
        assert page.get_by_label("Age").input_value() == ""
        assert page.locator("#form-restored").count() == 0

        # a form shown before logging in again elsewhere is refused as out of date; its page,
        # opened again from the refusal, has it back
        page.get_by_label("Age").fill("61")
        page.get_by_label("Gender").select_option("M")
        page.get_by_label("Occupation").select_option("writer")
        _end_the_session(page, app, server, expired=False)
        page.get_by_role("button", name="Recommend").click()
        page.wait_for_url("**/ui/recommend")
        assert "nothing was saved" in page.locator("main").inner_text()
        page.get_by_role("link", name="Open the page again").click()
        page.wait_for_url("**/ui")
        assert page.get_by_label("Age").input_value() == "61"
        assert page.get_by_label("Occupation").input_value() == "writer"

        # logging out drops what a refused form left: the next person to log in here sees none of it
        page.get_by_label("Age").fill("70")
        _end_the_session(page, app, server)
        page.get_by_role("button", name="Recommend").click()
        page.wait_for_url("**/ui/login?**")
        page.goto("/ui/login?reason=logged_out")
        _log_in(page, SESSION_PASSWORD)
        assert page.get_by_label("Age").input_value() == ""


def test_a_form_kept_for_later_holds_no_csrf_value_and_no_hidden_field(make_app: Callable[..., Any]) -> None:
    """What forms.js keeps of a form sent with the session over (docs/ui.md: the visible fields
    only, never a hidden field such as the CSRF value, never a password) is read back from the
    tab's sessionStorage on the login page it led to: the recommendation form's visible fields
    and a rating's stars, nothing of the CSRF value, the list's id or the movie's title."""
    import json

    app = make_app()
    with LiveServer(app) as server, browser_page(server.url) as (page, _requests):
        _log_in(page, SESSION_PASSWORD)
        csrf = page.locator('#recommend-form input[name="csrf_token"]').input_value()
        _fill_profile(page)
        _end_the_session(page, app, server)
        page.get_by_role("button", name="Recommend").click()
        page.wait_for_url("**/ui/login?**")
        kept = page.evaluate("() => sessionStorage.getItem('movierec.unsent-form')")
        assert kept and csrf not in kept, kept
        assert {name for name, _value in json.loads(kept)["fields"]} <= {
            "age", "gender", "occupation", "user_id", "max_recs"
        }, kept  # fmt: skip

        page.get_by_label("Password").fill(SESSION_PASSWORD)
        page.get_by_role("button", name="Log in").click()
        page.wait_for_url("**/ui")
        page.get_by_role("button", name="Recommend").click()
        page.wait_for_url("**/ui/recommendations/**")
        first = page.locator("li.result").nth(0)
        csrf = first.locator('input[name="csrf_token"]').input_value()
        title = first.locator('input[name="movie"]').input_value()
        first.locator("label.star").nth(6).click()
        _end_the_session(page, app, server)
        first.get_by_role("button", name="Save rating").click()
        page.wait_for_url("**/ui/login?**")
        kept = page.evaluate("() => sessionStorage.getItem('movierec.unsent-form')")
        assert kept and csrf not in kept and title not in kept, kept
        assert json.loads(kept)["fields"] == [["score", "3.5"]], kept


class _HeldPosts:
    """WSGI middleware: counts the posts each path received (what the server saw: a post the
    browser abandoned for a second one had reached it all the same) and, while ``held``, keeps
    each one waiting until ``release``, so a second press lands while the first is under way."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.posts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._released.set()

    def hold(self) -> None:
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    def wait_for(self, page: Any, path: str, count: int) -> None:
        """Until ``count`` posts to ``path`` arrived; waiting in Playwright, whose thread lets the
        browser's requests through the test's route (a plain wait here would stop them there)."""
        for _ in range(1200):  # 60 s: at once, unless the machine is loaded
            if self.posts.get(path, 0) >= count:
                return
            page.wait_for_timeout(50)
        raise AssertionError(f"no post to {path} arrived: {self.posts}")

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if environ["REQUEST_METHOD"] == "POST":
            path = environ["PATH_INFO"]
            with self._lock:
                self.posts[path] = self.posts.get(path, 0) + 1
            self._released.wait(timeout=30)
        return self.app(environ, start_response)


def _press_twice(page: Any, server: _HeldPosts, button: Any, path: str) -> None:
    """Press ``button``, and again 0.3 s later while its first post is held by the server (as a
    double click, a second Enter or an impatient click on a slow answer does); then let the
    posts through. The presses come from the page's script: Playwright's own click waits for the
    navigation to finish, which is held here."""
    server.hold()
    button.evaluate("b => { setTimeout(() => b.click(), 0); setTimeout(() => b.click(), 300); }")
    server.wait_for(page, path, 1)
    page.wait_for_timeout(600)  # past the second press, and time for its post to arrive
    server.release()


def test_pressing_a_forms_button_twice_sends_it_once(make_app: Callable[..., Any]) -> None:
    """A second press of "Log in", "Recommend" or "Save rating" (a double click, Enter pressed
    twice, an impatient click on a slow answer) posted the form again: two login attempts counted
    against the address's limit, two recommendations in the request log the model learns from,
    two feedback rows for one rating in the dashboard's figures and the breaker's judgement. A
    form is posted once until a new page is shown (a page shown again by Back included)."""
    app = make_app()
    db = app.extensions["movierec"].db
    server_app = _HeldPosts(app)
    with LiveServer(server_app) as server, browser_page(server.url) as (page, _requests):
        page.goto("/ui/login")
        page.get_by_label("Password").fill(SESSION_PASSWORD)
        _press_twice(page, server_app, page.get_by_role("button", name="Log in"), "/ui/login")
        page.wait_for_url("**/ui")
        _fill_profile(page)
        recommend = page.get_by_role("button", name="Recommend")
        _press_twice(page, server_app, recommend, "/ui/recommend")
        page.wait_for_url("**/ui/recommendations/**")
        first = page.locator("li.result").nth(0)
        first.locator("label.star").last.click()
        _press_twice(page, server_app, first.get_by_role("button", name="Save rating"), "/ui/feedback")
        page.wait_for_url("**saved=0**")
        page.locator("#saved-notice").wait_for()
        assert server_app.posts == {"/ui/login": 1, "/ui/recommend": 1, "/ui/feedback": 1}
        assert len(db.feedback_rows()) == 1

        # the next page's forms are sent as usual, and so is a page shown again by Back
        second = page.locator("li.result").nth(1)
        second.locator("label.star").last.click()
        second.get_by_role("button", name="Save rating").click()
        page.wait_for_url("**saved=1**")
        page.go_back()
        page.wait_for_url("**saved=0**")
        third = page.locator("li.result").nth(2)
        third.locator("label.star").last.click()
        third.get_by_role("button", name="Save rating").click()
        page.wait_for_url("**saved=2**")
        assert server_app.posts["/ui/feedback"] == 3
        assert len(db.feedback_rows()) == 3


def _solid(png: bytes, side: str) -> bool:
    """Whether a half star's screenshot is painted on its glyph's inner side, next to the star's
    middle (a solid half), not background there like its outer top corner (an outline)."""
    from io import BytesIO

    from PIL import Image

    image = Image.open(BytesIO(png)).convert("RGB")
    width, height = image.size
    inner_x, corner_x = (width - 4, 1) if side == "left" else (3, width - 2)
    inner, corner = image.getpixel((inner_x, height // 2)), image.getpixel((corner_x, 1))
    return sum(abs(a - b) for a, b in zip(inner, corner, strict=True)) > 150


def _painted(stars: Any) -> list[bool]:
    return [_solid(stars.nth(i).screenshot(), "left" if i % 2 == 0 else "right") for i in range(10)]


def test_the_chosen_stars_differ_from_the_others_by_shape_not_only_by_colour(
    make_app: Callable[..., Any],
) -> None:
    """A chosen star was the same solid glyph as an empty one, brown instead of grey (1.3:1 apart):
    to someone who does not tell those colours apart, or in forced colours, a rating looked
    unchosen. Chosen stars are solid, the others outlines; half a star is half solid. The stars
    offer what the API takes, 0.5 to 5 in half steps (they offered only 1 to 5), and stay within
    their result on a 320-pixel screen."""
    app = make_app()
    with LiveServer(app) as server, browser_page(server.url) as (page, _requests):
        _log_in(page, SESSION_PASSWORD)
        _open_a_list(page)
        first = page.locator("li.result").nth(0)
        stars = first.locator("label.star")
        for chosen in (6, 5):  # three of five, then two and a half
            stars.nth(chosen - 1).click()
            page.mouse.move(0, 0)  # no hover preview
            for forced_colors in ("none", "active"):  # and in Windows' high-contrast themes
                page.emulate_media(forced_colors=forced_colors, color_scheme="light")
                expected = [i < chosen for i in range(10)]
                assert _painted(stars) == expected, f"{chosen} halves, forced colours {forced_colors}"
            page.emulate_media(forced_colors="none")
        screenshot(page, "ui-stars-chosen", full_page=False)

        first.get_by_role("button", name="Save rating").click()
        page.locator("#saved-notice").wait_for()
        assert "Your rating: 2.5 of 5" in page.locator("li.result").nth(0).inner_text()
        assert [row.score for row in app.extensions["movierec"].db.feedback_rows()] == [2.5]
        assert first.locator("input.star-input:checked").get_attribute("value") == "2.5"

        page.set_viewport_size({"width": 320, "height": 700})
        page.reload()
        overflow = page.evaluate(
            """() => Array.from(document.querySelectorAll('li.result')).map((item) =>
                 item.querySelector('.stars').getBoundingClientRect().right
                 - item.getBoundingClientRect().right)"""
        )
        assert max(overflow) <= 0, f"the stars reach past their result at 320 px: {overflow}"
        screenshot(page, "ui-stars-narrow", full_page=False)


def test_the_dashboard_draws_its_charts_from_real_data(
    make_app: Callable[..., Any], model_store: Path, synthetic_data: Any, tmp_path: Path
) -> None:
    from app.recommender.training import train

    # a store with two versions, so the evaluation plot has a history to draw
    store = tmp_path / "store"
    shutil.copytree(model_store, store, symlinks=True)
    train(synthetic_data, store, ["most_rated", "segment_most_liked"], seeds=(0,))
    app = make_app(model_path=store, model_dir=store)
    service = app.extensions["movierec"].recommendations
    for age, score in ((25, 5.0), (40, 3.0), (61, 4.0)):
        served = service.recommend(RecommendQuery(3, age, "M", "writer"))
        service.score(served.id, served.items[0].title, score)

    with LiveServer(app) as server, browser_page(server.url) as (page, requests):
        _log_in(page, SESSION_PASSWORD)
        page.goto("/ui/dashboard")
        assert "Admins only" in page.locator("h1").inner_text()  # a client token is not enough

        page.get_by_role("button", name="Log out").click()
        page.wait_for_url("**/ui/login?**")
        _log_in(page, ADMIN_PASSWORD)
        page.get_by_role("link", name="Dashboard").click()
        page.wait_for_url("**/ui/dashboard")
        for chart in CHARTS:
            page.wait_for_selector(f"#{chart}[data-rendered='true']")
            painted = page.evaluate(
                """(id) => { const c = document.getElementById(id); const d = c.getContext('2d')
                         .getImageData(0, 0, c.width, c.height).data; let n = 0;
                         for (let i = 3; i < d.length; i += 4) { if (d[i] > 0) n++; } return n; }""",
                chart,
            )
            assert painted > 500, f"{chart} has almost nothing drawn ({painted} pixels)"
        history_points = page.evaluate("Chart.getChart('chart-history').data.datasets[2].data.length")
        assert history_points == 2
        counts = page.evaluate("Chart.getChart('chart-feedback').data.datasets[0].data")
        assert sum(counts) == 3
        assert page.locator("#kpi-count").inner_text() == "3"
        assert page.locator("#kpi-mean").inner_text() == "4.00"
        assert page.locator("#kpi-like").inner_text() == "66.7%"
        for key in ("drift", "breaker", "alerts"):  # every app has its monitor: each panel shows its figures
            assert "Not available." not in page.locator(f"#section-{key}").inner_text()
            assert page.locator(f"#section-{key} dl, #section-{key} ul, #section-{key} p.hint").count()
        version = app.extensions["movierec"].models.bundle.version
        assert page.locator("#serving-version").inner_text() == version
        screenshot(page, "ui-dashboard")

        page.get_by_label("Group by").select_option("hour")
        page.get_by_role("button", name="Show").click()
        page.wait_for_url("**bucket=hour")
        page.wait_for_selector("#chart-feedback[data-rendered='true']")
        assert len(page.evaluate("Chart.getChart('chart-feedback').data.labels")) == 48
        page.set_viewport_size({"width": 390, "height": 844})
        page.reload()
        page.wait_for_selector("#chart-like[data-rendered='true']")
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        screenshot(page, "ui-dashboard-mobile")
        # the narrowest width WCAG's reflow criterion asks for: still no horizontal scrolling
        page.set_viewport_size({"width": 320, "height": 700})
        page.reload()
        page.wait_for_selector("#chart-like[data-rendered='true']")
        widths = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert widths[0] <= widths[1], f"the dashboard scrolls sideways at 320 px: {widths}"

    assert requests.blocked == []
    assert any(url.endswith("/ui/static/vendor/chartjs/chart.umd.min.js") for url in requests.seen)


def test_without_javascript_the_dashboard_says_where_its_charts_figures_are(
    make_app: Callable[..., Any],
) -> None:
    """Every page works with scripts off; the dashboard's charts cannot be drawn then, and each
    was an empty 16rem box with nothing said. Each says its figures are in the tables instead;
    with scripts on, that note is not shown."""
    app = make_app()
    service = app.extensions["movierec"].recommendations
    served = service.recommend(RecommendQuery(3, 30, "F", "writer"))
    service.score(served.id, served.items[0].title, 4.0)
    for javascript in (False, True):
        with LiveServer(app) as server, browser_page(server.url, javascript=javascript) as (page, _requests):
            _log_in(page, ADMIN_PASSWORD)
            page.goto("/ui/dashboard")
            for chart in CHARTS:
                note = page.locator(f"figure:has(#{chart}) .chart-fallback")
                if javascript:
                    page.wait_for_selector(f"#{chart}[data-rendered='true']")
                    assert not note.is_visible(), chart
                else:
                    assert note.is_visible(), chart
                    assert "JavaScript" in note.inner_text() and "table" in note.inner_text()
            if not javascript:
                screenshot(page, "ui-dashboard-no-javascript")
