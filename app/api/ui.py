"""The web pages for people: log in, ask for recommendations, rate them; the admin dashboard.

Server-rendered templates, no front-end build. The pages use the same services and the
same pydantic schemas as the JSON API (one way to do each thing): a form is turned into
the JSON-shaped dict the API would receive, validated by the API's schema, and its errors
are shown inline in the schema's own words (``FIELD_RULES``).

Auth is the API's JWT, kept in an HttpOnly, SameSite=Strict cookie scoped to ``/ui``. The
token's ``csrf`` claim is echoed into every form as a hidden field (flask-jwt-extended's
double-submit check, ``JWT_CSRF_CHECK_FORM``). ``JWT_TOKEN_LOCATION`` stays ``["headers"]``
for the whole app, so /api endpoints never read the cookie; only these views look for the
token in cookies (``verify_jwt_in_request(locations=["cookies"])``). A post the browser says
another site sent (``Sec-Fetch-Site``, else ``Origin``) is refused first, the login's included.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from contextlib import suppress
from functools import cache, wraps
from typing import Any, TypeVar
from urllib.parse import urlencode, urlsplit

from flask import Blueprint, Flask, Response, current_app, g, render_template, request, url_for
from flask_jwt_extended import (
    decode_token,
    get_jwt,
    set_access_cookies,
    unset_jwt_cookies,
    verify_jwt_in_request,
)
from flask_jwt_extended.exceptions import (
    CSRFError,
    JWTExtendedException,
    NoAuthorizationError,
    RevokedTokenError,
)
from jwt.exceptions import ExpiredSignatureError, PyJWTError
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import HTTPException

from app.api.auth import REFUSED_LOGIN, issue_token
from app.api.errors import log_database_down
from app.api.recommend import leave_out_rated
from app.api.schemas import FIELD_RULES, LoginRequest, RecommendRequest, ScoreRequest, field_errors
from app.api.security import revoke_current_token, token_issued_here, token_revoked
from app.config import Settings
from app.errors import ApiError, InvalidRequest, NotFound, Unauthorized, Unavailable
from app.recommender.bundle import BundleError
from app.recommender.segments import OCCUPATIONS
from app.services import dashboard
from app.services.request_ids import RequestIds
from app.storage.db import DatabaseUnavailableError

bp = Blueprint("ui", __name__, url_prefix="/ui", static_folder="static", static_url_path="/static")

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger(__name__)

GENDERS = (("F", "Female"), ("M", "Male"), ("O", "Other"))
LABELS = {
    "session_password": "Password",  # nosec B105 - a form label
    "age": "Age",
    "gender": "Gender",
    "occupation": "Occupation",
    "max_recs": "Number of recommendations",
    "user_id": "Known user id",
    "id": "Recommendation list",
    "movie": "Movie",
    "score": "Rating",
    "body": "Form",
}
LOGIN_REASONS = {
    "expired": "Your session has expired. Please log in again.",
    "invalid": "Your session is no longer valid. Please log in again.",
    "revoked": "Your session was ended. Please log in again.",
    "required": "Please log in to continue.",
    "logged_out": "You have logged out.",
    "logout_not_recorded": (
        "You have logged out in this browser, but the server could not record the logout right now "
        "(its storage is unreachable): a copy of this session's token may still be accepted until it expires."
    ),
}
# after a form's post whose session was over (``unsaved=1``): the page it then leads to (a rating's
# list) looked as if what was sent had been taken
NOT_SAVED = "What you sent was not saved: send it again once you have logged in."
LOGGED_OUT = frozenset({"logged_out", "logout_not_recorded"})
# not "reload the page": the page showing this is the answer to the refused post, and reloading
# it sends the same out-of-date form again; the page links to where the form was instead
CSRF_MESSAGE = (
    "This form was not sent from this site or is out of date (you may have logged in again since "
    "it was shown), so nothing was saved. Open its page again and send it once more."
)
# the login limit's message at the password field (after its label in the summary)
LOGIN_LIMITED = "was tried too many times from your address: wait a minute and try again"
# why a login was refused (``error=`` of the login page it is redirected to): the password field's message
LOGIN_ERRORS = {
    "invalid": FIELD_RULES["session_password"],
    "wrong": REFUSED_LOGIN,
    "limited": LOGIN_LIMITED,
}
NO_MODEL = (
    "No recommendation model is loaded right now, so no recommendations can be made. "
    "Please try again in a moment."
)
# why a recommendation form was given back (``unsent=`` of the form's address it is redirected to):
# said of that post, so still true when the page is reloaded, or gone back to, once the service is ready
UNSENT = {
    "no_model": (
        "No recommendation model was loaded when you sent the form, so no recommendations were made "
        "and nothing was logged. Your answers are kept below: send the form again in a moment."
    ),
    "busy": (
        "The service could not take a recommendation when you sent the form, so none was made and "
        "nothing was logged. Your answers are kept below: send the form again in a moment."
    ),
}
# why a recommendation form was given back with a field marked (``unsent=`` too): its field and
# message, said of that post as UNSENT's are; what a later model may answer, so not a 400 at the
# post's address, which Back or a reload posted again
UNSENT_FIELD = {
    "unknown_user": (
        "user_id",
        "was not known to the model when you sent the form, so no recommendations were made and "
        "nothing was logged. Give another, or give age, gender and occupation.",
    ),
}
# why a rating was not stored (``why=`` of the page its post is redirected to), said of that post
RATING_NOT_SAVED = {
    "database": "the database could not be reached",
    "busy": "the service could not store it",
}
STAR_STEP = 0.5  # half a star: the step of MovieLens's own ratings, and the API's lowest score
CROSS_SITE_MESSAGE = "This form was sent from another site. Open this site's own page and try again."
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_OWN_FETCHES = frozenset({"same-origin", "none"})  # Sec-Fetch-Site: from this origin, or the user's own
_DEFAULT_PORTS = {"http": 80, "https": 443}
_INTEGER = re.compile(r"^[+-]?\d{1,12}$")
_NUMBER = re.compile(r"^[+-]?(\d{1,6}(\.\d{0,6})?|\.\d{1,6})$")
# a page of this UI, and its query as _this_page writes one (urlencode's characters only: nothing
# there can end the query, nor lead off this site); \Z: "$" also matches before a final newline
_SAFE_NEXT = re.compile(r"^/ui(/[A-Za-z0-9_\-/]*)?(\?[A-Za-z0-9_.~%+=&\-]*)?\Z")

SECURITY_HEADERS = {
    # Everything is served from this origin: no CDN, no inline script, no framing.
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}


def configure(app: Flask, settings: Settings) -> None:
    """Cookie settings for the UI's token; the API keeps reading tokens from headers only."""
    secure = settings.ui_cookie_secure
    if secure is None:
        secure = not (settings.testing or settings.debug)
    app.config.update(
        JWT_ACCESS_COOKIE_PATH="/ui",  # the browser never sends the cookie to /api
        JWT_COOKIE_SAMESITE="Strict",
        JWT_COOKIE_SECURE=secure,
        JWT_COOKIE_CSRF_PROTECT=True,
        JWT_CSRF_CHECK_FORM=True,  # the csrf claim comes back as the hidden form field csrf_token
        JWT_CSRF_IN_COOKIES=False,  # forms are rendered on the server: no readable CSRF cookie needed
        JWT_SESSION_COOKIE=True,  # the token's own expiry decides, so we can say "session expired"
    )
    app.register_blueprint(bp)


# --------------------------------------------------------------------------- helpers


def _services() -> Any:
    return current_app.extensions["movierec"]


def _see_other(location: str) -> Response:
    """303 to a path on this site (after a post the browser then GETs it)."""
    response = Response(status=303)
    response.headers["Location"] = location
    return response


def _login_address(next_path: str | None, **query: str) -> str:
    """The login page's address with ``query`` (why it is shown), and ``next`` when it is a page here."""
    if next_path and _SAFE_NEXT.match(next_path):
        query["next"] = next_path
    return url_for("ui.login") + "?" + urlencode(query)


def _login_redirect(reason: str, next_path: str | None = None, unsaved: bool = False) -> Response:
    """To the login page, saying why (``reason``), and that a post's form was not saved (``unsaved``)."""
    query = {"reason": reason}
    if unsaved:
        query["unsaved"] = "1"
    response = _see_other(_login_address(next_path, **query))
    unset_jwt_cookies(response)
    return response


def _login_refused(error: str) -> Response:
    """A refused login post answered 303 to the login page saying why (``error``, a key of
    LOGIN_ERRORS; never the password), its way back (``next``) kept: the form itself, answered at
    the post's address, was sent again by Back or a reload, another try against the login limit."""
    return _see_other(_login_address(_next_path(), error=error))


class _CsrfFailure(Exception):
    pass


def _authenticate() -> Response | None:
    """Verify the cookie token (and CSRF on POST); a redirect to the login page when it fails."""
    next_path = _this_page() if request.method == "GET" else _page_of_post()
    unsaved = request.method not in _SAFE_METHODS
    try:
        verify_jwt_in_request(locations=["cookies"])
    except CSRFError as exc:  # missing or mismatched double-submit value
        raise _CsrfFailure from exc
    except TypeError as exc:  # a double-submit value that cannot be compared: mismatched as well
        if not _from_csrf_comparison(exc):
            raise
        raise _CsrfFailure from exc
    except NoAuthorizationError:
        return _login_redirect("required", next_path, unsaved)
    except ExpiredSignatureError:
        return _login_redirect("expired", next_path, unsaved)
    except RevokedTokenError:
        return _login_redirect("revoked", next_path, unsaved)
    except (JWTExtendedException, PyJWTError):
        return _login_redirect("invalid", next_path, unsaved)
    return None


def _from_csrf_comparison(error: TypeError) -> bool:
    """Whether ``error`` is flask-jwt-extended's CSRF check failing rather than refusing.

    The library compares the token's ``csrf`` claim with the submitted value by
    ``hmac.compare_digest``, which raises TypeError for a claim that is not text (a token signed
    with the key elsewhere: a number, a list, null) and for text that is not ASCII (a typed form
    value): the post was a 500 page. Its decoder raises nothing else of that type itself, so a
    TypeError raised in it (not in PyJWT below it, nor in this app's loaders) is that comparison.
    """
    trace = error.__traceback__
    while trace is not None and trace.tb_next is not None:
        trace = trace.tb_next
    return trace is not None and trace.tb_frame.f_globals.get("__name__") == "flask_jwt_extended.tokens"


def _this_page() -> str:
    """The page asked for, its query included (re-encoded), to return to after logging in: the
    path alone led an admin on the hourly dashboard (``?bucket=hour``) back to the daily one."""
    query = urlencode(list(request.args.items(multi=True)))
    return request.path + ("?" + query if query else "")


def _page_of_post() -> str | None:
    """Where a post whose session is gone came from, to return there after logging in: a
    rating leads back to its list (the rating itself is not stored without a valid token)."""
    if request.endpoint == "ui.feedback":
        request_id = RequestIds.canonical(request.form.get("id", ""))
        if request_id is not None:
            return url_for("ui.results", request_id=request_id)
    return None


def login_required(admin: bool = False) -> Callable[[F], F]:
    """Require a valid cookie token (admin role when ``admin``); redirect to the login page otherwise."""

    def decorate(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            failure = _authenticate()
            if failure is not None:
                return failure
            if admin and get_jwt().get("role") != "admin":
                return _page("ui/error.html", 403, heading="Admins only", message=(
                    "The dashboard needs an admin login. Log out and log in with the admin password."
                ))  # fmt: skip
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def _page(template: str, status: int = 200, **context: Any) -> Response:
    response = Response(
        render_template(template, **_common(), **context), status=status, mimetype="text/html"
    )
    return response


def _common() -> dict[str, Any]:
    """What every page needs: who is logged in and the CSRF value for its forms."""
    claims: Mapping[str, Any] = {}
    try:
        claims = get_jwt()
    except RuntimeError:  # no token was verified for this request (login page, errors)
        claims = g.get("ui_claims", {})  # an error page answering a post: read by _identify
    return {"role": claims.get("role"), "csrf_token": claims.get("csrf", "")}


def _form_to_json(
    form: Mapping[str, str], integers: tuple[str, ...] = (), numbers: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Form text → the JSON-shaped dict the API's schema validates.

    Only conversion happens here, never validation: blank fields are left out (as if the
    JSON omitted them), well-formed integers and numbers become ``int``/``float``, and
    anything else stays a string so the schema rejects it with its own message.
    """
    payload: dict[str, Any] = {}
    for name, raw in form.items():
        if name == "csrf_token":
            continue
        value = raw.strip()
        if value == "":
            continue
        if name in integers and _INTEGER.match(value):
            payload[name] = int(value)
        elif name in numbers and _NUMBER.match(value):
            payload[name] = float(value)
        else:
            payload[name] = value
    return payload


def _validate(model: type[BaseModel], payload: dict[str, Any]) -> tuple[Any, dict[str, str]]:
    try:
        return model.model_validate(payload), {}
    except ValidationError as exc:
        return None, field_errors(exc.errors())  # type: ignore[arg-type]


@cache
def _bounds(model: type[BaseModel]) -> dict[str, dict[str, float]]:
    """Each number field's ``minimum`` and ``maximum`` as ``model`` validates them (the bounds its
    spec publishes): the forms' inputs, hints and stars offer those, never numbers of their own."""
    bounds = {}
    for name, field in model.model_json_schema()["properties"].items():
        for kind in field.get("anyOf", [field]):
            if kind.get("type") in ("integer", "number") and "minimum" in kind and "maximum" in kind:
                bounds[name] = {"min": kind["minimum"], "max": kind["maximum"]}
    return bounds


@cache
def _score_steps() -> tuple[float, ...]:
    """The ratings the stars offer: ScoreRequest's range (0.5 to 5) in half stars."""
    score = _bounds(ScoreRequest)["score"]
    count = round((score["max"] - score["min"]) / STAR_STEP)
    return tuple(score["min"] + STAR_STEP * i for i in range(count + 1))


def _recommend_form_context(
    values: Mapping[str, Any] | None = None,
    errors: Mapping[str, str] | None = None,
    notice: str | None = None,
) -> dict[str, Any]:
    services = _services()
    if notice is None and services.models.bundle is None:
        notice = NO_MODEL  # said before the form is filled in, not only once it is refused
    return {
        "values": values or {"max_recs": services.settings.default_max_recs},
        "errors": errors or {},
        "notice": notice,
        "labels": LABELS,
        "rules": FIELD_RULES,
        "genders": GENDERS,
        "occupations": OCCUPATIONS,
        "bounds": _bounds(RecommendRequest),
    }


# --------------------------------------------------------------------------- error pages


@bp.errorhandler(_CsrfFailure)
def _csrf_failed(_error: _CsrfFailure) -> Response:
    _identify()
    return _page(
        "ui/error.html",
        400,
        heading="Form could not be accepted",
        message=CSRF_MESSAGE,
        retry=(_page_of_post() or url_for("ui.index"), "Open the page again"),
        keeps_form=True,  # forms.js fills the form in again there, as it was sent
    )


@bp.errorhandler(DatabaseUnavailableError)
def _database_down(error: DatabaseUnavailableError) -> Response:
    log_database_down(error)  # the blueprint's handler replaces the app's, which logged it
    # a page opened saves nothing: saying "nothing was saved" there only alarmed
    outcome = "this page cannot be shown" if request.method == "GET" else "nothing was saved"
    response = _page("ui/error.html", 503, heading="Temporarily unavailable", message=(
        f"The database cannot be reached right now, so {outcome}. Please try again in a moment."
    ), **_way_back())  # fmt: skip
    response.headers["Retry-After"] = "5"
    return response


def _way_back() -> dict[str, Any]:
    """The link of a page answering "not now" (503): to the page itself again when it was opened, to
    the list a rating was sent from; none (the error page's link to the form) otherwise. The form
    lost what was being looked at: the list's address is not in the address bar after a post.
    After a post the page keeps what the form held, for forms.js to fill it in again there."""
    if request.method == "GET":
        return {"retry": (request.path, "Try again")}
    page = _page_of_post()
    return {"keeps_form": True, **({"retry": (page, "Back to the list")} if page is not None else {})}


@bp.errorhandler(BundleError)
def _no_model(_error: BundleError) -> Response:
    response = _page("ui/error.html", 503, heading="Not ready", message=NO_MODEL)
    response.headers["Retry-After"] = "5"  # as the API's 503 for the same state
    return response


@bp.errorhandler(ApiError)
def _api_error(error: ApiError) -> Response:
    if error.status == 503:  # a list another worker has not written yet: not the person's error
        response = _page(
            "ui/error.html", 503, heading="Temporarily unavailable", message=error.message, **_way_back()
        )
    else:
        response = _page(
            "ui/error.html", error.status, heading="Something is not right", message=error.message
        )
    response.headers.update(error.headers)  # a 503's Retry-After
    return response


def is_page_path(path: str) -> bool:
    return path == "/ui" or path.startswith("/ui/")


@bp.errorhandler(HTTPException)
def error_page(error: HTTPException) -> Response:
    """The UI's error page. Also answers the routing errors under /ui (an unknown page,
    ``GET /ui/logout``): Flask gives those to the app's handlers, never a blueprint's, and the
    browser got the API's JSON envelope (app/api/errors.py hands them here)."""
    _identify()
    status = error.code or 500
    headings = {404: "Not found", 405: "Not allowed", 413: "Too large", 429: "Too many attempts"}
    messages = {
        404: "There is nothing at this address.",
        413: "What was sent is too large.",
        429: "Too many attempts from your address. Wait a minute and try again.",
    }
    message = messages.get(status, (error.description or error.name or "").split("\n")[0])
    if status == 429 and request.endpoint == "ui.login":
        # the login limit: to the form again (its way back, next, kept), explained at the field
        response = _login_refused("limited")
    else:
        response = _page(
            "ui/error.html", status, heading=headings.get(status, "Request not accepted"), message=message
        )
    for name, value in error.get_headers():  # keep Retry-After, Allow ...
        if name.lower() != "content-type":
            response.headers[name] = value
    return _headers(response)  # a routing error skips the blueprint's after_request


def _identify() -> None:
    """Read the cookie's token, if any, for an error page answered without a view's check (a
    routing error, a refused post), so its header shows the links and "Log out" to someone logged
    in, not "Log in". An expired, revoked or forged token: shown as logged out.

    A post's token is checked with its form's CSRF value, which such a post never passed (or
    failed): here it is only read, to show who is logged in (its CSRF value goes into the page's
    own log-out form, as on any page; the refused form's value is not taken), the way the
    library checks it otherwise: signature and expiry, then the claims issued here, then revocation.
    """
    with suppress(JWTExtendedException, PyJWTError):
        if request.method in _SAFE_METHODS:
            verify_jwt_in_request(optional=True, locations=["cookies"])
            return
        token = request.cookies.get(current_app.config["JWT_ACCESS_COOKIE_NAME"])
        if token:
            claims = decode_token(token)
            if token_issued_here({}, claims) and not token_revoked({}, claims):
                g.ui_claims = claims


@bp.errorhandler(Exception)
def _unexpected(_error: Exception) -> Response:
    log.exception("unhandled error in a web page")
    return _page("ui/error.html", 500, heading="Something went wrong", message=(
        "The page could not be shown because of an internal error. It has been logged."
    ))  # fmt: skip


@bp.after_request
def _headers(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if not request.path.startswith("/ui/static/"):
        response.headers["Cache-Control"] = "no-store"  # pages show per-session data
    return response


# --------------------------------------------------------------------------- posts from other sites


@bp.before_request
def _refuse_other_sites() -> Response | None:
    """A 403 page for a post under /ui that the browser says another site sent, before its view
    runs (no password tried, no login attempt counted, no CSRF value compared).

    Every form here is posted by a page of this site (``form-action 'self'``). The later posts
    carry the session's CSRF value, but the login cannot (no session exists yet): a form on
    another site could post the shared session password to /ui/login, logging the visitor's
    browser in, and spend their address's login budget.
    """
    if request.method in _SAFE_METHODS or _sent_from_this_site():
        return None
    _identify()
    return _page("ui/error.html", 403, heading="Form could not be accepted", message=CROSS_SITE_MESSAGE)


def _sent_from_this_site() -> bool:
    """The browser's ``Sec-Fetch-Site`` when it sends one (only ``same-origin`` and ``none``, the
    user's own navigation, pass); else its ``Origin``, which must name this host and port; a
    request with neither (curl, scripts, browsers from before 2020) is not a cross-site form.

    The origin's scheme is not compared: behind a proxy that ends TLS the app sees ``http``
    while the browser says ``https``, and the app trusts no ``X-Forwarded-Proto`` or ``-Host`` (only
    the login limit reads ``X-Forwarded-For``, when told to: docs/reliability.md). So a host and
    port missing on one side are the origin scheme's default on both. A proxy that rewrites
    ``Host`` makes the ``Origin`` check refuse the old browsers' posts; ``Sec-Fetch-Site`` (every
    current browser) does not depend on it.
    """
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None:
        return fetch_site.strip().lower() in _OWN_FETCHES
    origin = request.headers.get("Origin")
    return origin is None or _same_host(origin, request.host)


def _same_host(origin: str, host: str) -> bool:
    """Whether ``origin`` (scheme://host[:port], or ``null``) names ``host`` (the Host header)."""
    try:
        sent, own = urlsplit(origin.strip()), urlsplit("//" + host)
        default = _DEFAULT_PORTS.get(sent.scheme.lower())
        return (
            default is not None
            and sent.hostname is not None
            and sent.hostname == own.hostname
            and (sent.port or default) == (own.port or default)
        )
    except ValueError:  # a port that is not a number, a bracket left open
        return False


# --------------------------------------------------------------------------- login / logout


def _next_path() -> str:
    """The login form's ``next`` (query or form), when it is a page of this UI; else ""."""
    next_path = request.values.get("next", "")
    return next_path if _SAFE_NEXT.match(next_path) else ""


def _login_form(notice: str | None = None, errors: Mapping[str, str] | None = None) -> Response:
    """The login page. Unless it follows a log-out, it keeps what a form sent with the session
    over held (``keeps_form``): forms.js fills that form in again on the page logging in leads to
    (a log-out drops it, so the next person to log in in this tab does not see it)."""
    logged_out = request.args.get("reason", "") in LOGGED_OUT
    return _page("ui/login.html", notice=notice, errors=errors or {}, next_path=_next_path(),
                 labels=LABELS, keeps_form=not logged_out)  # fmt: skip


@bp.route("/login", methods=["GET", "POST"])
def login() -> Response:
    next_path = _next_path()
    if request.method != "POST":  # GET and HEAD: the form; only a POST tries a password (and is limited)
        notice = LOGIN_REASONS.get(request.args.get("reason", ""))
        if notice is not None and request.args.get("unsaved") == "1":
            notice += " " + NOT_SAVED
        error = LOGIN_ERRORS.get(request.args.get("error", ""))
        return _login_form(notice, {"session_password": error} if error else None)
    # No token exists yet, so there is nothing to CSRF-check: a post from another site is
    # refused before this (_refuse_other_sites), and the SameSite=Strict cookie set here (and
    # the CSRF value in its token) protects every later post.
    # the password exactly as typed (as POST /api/login takes it): stripping it would turn a
    # valid password with a leading/trailing space into a wrong one, and a wrong one into a valid one
    payload = {"session_password": request.form.get("session_password", "")}
    parsed, _errors = _validate(LoginRequest, payload)  # only the password: its one rule's message
    if parsed is None:
        return _login_refused("invalid")
    try:
        token = issue_token(parsed.session_password)
    except Unauthorized:
        return _login_refused("wrong")
    response = _see_other(next_path or url_for("ui.index"))
    set_access_cookies(response, token)
    return response


@bp.post("/logout")
def logout() -> Response:
    """Revoke the token (as POST /api/logout does) and drop the cookie, in every case.

    When no store takes the revocation (Redis and the database both down), the API answers 503
    and its client, still holding the token, retries. Here the 503 page kept the cookie: the
    person who clicked "Log out" was still logged in. The browser session ends anyway, and the
    login page says the logout was not recorded on the server (the token stays valid until it
    expires, but for this worker, which refuses it and writes it once the database answers).

    A session already over (the token revoked by a first click of a double click, expired, or no
    cookie left) is logged out as asked: the login page said "Your session was ended. Please log
    in again." A live session's post still needs its form's CSRF value (_authenticate raises).
    """
    if _authenticate() is not None:
        return _login_redirect("logged_out")
    try:
        revoke_current_token()
    except Unavailable:
        return _login_redirect("logout_not_recorded")
    return _login_redirect("logged_out")


# --------------------------------------------------------------------------- recommendations


@bp.get("")
@login_required()
def index() -> Response:
    """The form; filled in from the address only when it is one a "not now" (or an unknown user)
    led to (``unsent``)."""
    reason = request.args.get("unsent", "")
    notice, marked = UNSENT.get(reason), UNSENT_FIELD.get(reason)
    if notice is None and marked is None:
        return _page("ui/recommend.html", **_recommend_form_context())
    typed = {name: request.args[name] for name in RecommendRequest.model_fields if name in request.args}
    errors = dict([marked]) if marked else None
    return _page("ui/recommend.html", **_recommend_form_context(typed, errors, notice=notice))


@bp.get("/")
def index_with_slash() -> Response:
    """``/ui/`` is typed as often as ``/ui``: send it to the form (which asks for a login first)."""
    return _see_other(url_for("ui.index"))


@bp.get("/recommend")
@bp.get("/feedback")
def form_answer_opened_again() -> Response:
    """An invalid form is answered at its post's address, which the address bar then shows; opened
    again from there (Enter in the address bar, a new tab, a restored session) it was the 405
    "Not allowed" page. It leads to the form (which asks for a login first)."""
    return _see_other(url_for("ui.index"))


@bp.post("/recommend")
@login_required()
def recommend() -> Response:
    form = {k: v for k, v in request.form.items() if k in RecommendRequest.model_fields}
    payload = _form_to_json(form, integers=("age", "max_recs", "user_id"))
    parsed, errors = _validate(RecommendRequest, payload)
    if parsed is not None:
        query = parsed.query()
        if query.user_id is not None:  # never a movie that user rated, as /api/recommend
            (query,) = leave_out_rated([query])
        try:
            served = _services().recommendations.recommend(query)
        except NotFound:  # another model may know the user: not to be posted again by Back
            return _recommend_form_again(payload, "unknown_user")
        except BundleError:  # the form again, as typed, to send once a model is loaded
            return _recommend_form_again(payload, "no_model")
        except Unavailable:  # the request log is full: nothing logged, the form again as typed
            return _recommend_form_again(payload, "busy")
        else:
            g.model_version = served.model_version  # for the access log line, as /api/recommend's
            # Post/Redirect/Get: the list is shown at its own address, so reloading it (or going
            # back to it) shows the same list again instead of resending the form, which logged
            # a new recommendation each time.
            return _see_other(url_for("ui.results", request_id=served.id))
    return _page("ui/recommend.html", 400, **_recommend_form_context(request.form, errors))


def _recommend_form_again(payload: Mapping[str, Any], reason: str) -> Response:
    """A "not now" (``reason``, a key of UNSENT or UNSENT_FIELD): nothing was made or logged. A
    redirect (303) to the form, what was typed in its address (the form's own fields, none secret;
    never the CSRF value), whose page fills it in and says why (Post/Redirect/Get).

    It was the form itself, 503 with Retry-After, at the post's address: Back to it from the list
    asked for next, or a reload, posted the form again (Chromium does it unasked), and once the
    service was ready that logged one more recommendation. No Retry-After on the redirect: on a
    3xx it asks the browser to wait before it opens the form (RFC 9110 10.2.3); the page says when
    to send the form again (the API's 503 keeps it, for the clients that read it).
    """
    typed = {name: str(value) for name, value in payload.items() if name in RecommendRequest.model_fields}
    return _see_other(url_for("ui.index") + "?" + urlencode({**typed, "unsent": reason}))


def _list_not_found() -> Response:
    return _page("ui/error.html", 404, heading="Not found", message=(
        "There is no recommendation list with this id. Ask for new recommendations."
    ))  # fmt: skip


def _results_page(request_id: str, status: int = 200, **extra: Any) -> Response:
    """The list served under ``request_id``, with the ratings stored for it.

    Shown to any logged-in session that has the id, as a score is taken from any token with it:
    an id is 80 random bits and a MAC (app/services/request_ids.py), listed by no page or
    endpoint, so it cannot be guessed; and a list outlives its token (after logging in again the
    person is led back to it). Ids not signed here are "not found" at once.
    """
    services = _services()
    request_id = RequestIds.canonical(request_id) or request_id  # as the API takes it: in any case
    stored = services.recommendations.served_list(request_id)
    if stored is None:
        return _list_not_found()
    # A list still in this worker's request log can have no stored ratings (a score commits its
    # list first): its page, the one right after the form, needs nothing from the database.
    buffered = services.recommendations.request_log.get(request_id) is not None
    ratings = {} if buffered else dashboard.feedback_for_request(services.db, request_id)
    return _page(
        "ui/results.html",
        status,
        stored=stored,
        ratings=ratings,
        labels=LABELS,
        score_steps=_score_steps(),
        **extra,
    )


@bp.get("/recommendations/<request_id>")
@login_required()
def results(request_id: str) -> Response:
    saved = request.args.get("saved", "")
    return _results_page(request_id, saved=int(saved) if re.fullmatch(r"[0-9]{1,6}", saved) else None)


@bp.post("/feedback")
@login_required()
def feedback() -> Response:
    """Store one star rating through the same service as POST /api/recommend/score, then show the list."""
    form = {k: v for k, v in request.form.items() if k in ScoreRequest.model_fields}
    payload = _form_to_json(form, numbers=("score",))
    parsed, errors = _validate(ScoreRequest, payload)
    if parsed is not None:
        try:
            _services().recommendations.score(parsed.id, parsed.movie, parsed.score, readable=True)
        except InvalidRequest as exc:
            errors = dict(exc.fields or {"body": exc.message})
        except DatabaseUnavailableError as exc:  # the list not known here and not readable: not stored
            log_database_down(exc)
            return _see_other(url_for("ui.rating_not_saved", request_id=parsed.id, why="database"))
        except Unavailable:  # the list pending in another worker, the journal full: not stored
            return _see_other(url_for("ui.rating_not_saved", request_id=parsed.id, why="busy"))
        else:
            try:
                stored = _services().recommendations.served_list(parsed.id)
            except DatabaseUnavailableError as exc:
                # the score is kept (the journal ships it once the database is back): only reading
                # the list back failed, so the page must not say that nothing was saved; a page of
                # its own (Post/Redirect/Get: answered here, Back or a reload posted the rating again)
                log_database_down(exc)
                return _see_other(url_for("ui.rating_kept", request_id=parsed.id))
            titles = [item["title"] for item in stored["items"]] if stored is not None else []
            position = titles.index(parsed.movie) if parsed.movie in titles else 0
            target = url_for("ui.results", request_id=parsed.id, saved=position) + f"#item-{position}"
            return _see_other(target)
    request_id = str(payload.get("id", ""))
    if "id" in errors or not request_id:
        return _page("ui/error.html", 400, heading="Rating not saved", message=(
            "This rating does not belong to a recommendation list issued here. Ask for new recommendations."
        ))  # fmt: skip
    return _results_page(request_id, 400, failed_movie=str(payload.get("movie", "")), feedback_errors=errors)


@bp.get("/recommendations/<request_id>/rating-saved")
@login_required()
def rating_kept(request_id: str) -> Response:
    """Where a rating stored while its list could not be read back (the database down) leads: it
    says so with no database read, in words that stay true when the page is shown again later. It
    names no movie (a link could then make it claim any title was rated) and answers only for an id
    issued here."""
    request_id = RequestIds.canonical(request_id) or request_id
    if not _services().recommendations.ids.verify(request_id):
        return _list_not_found()
    return _page("ui/notice.html", heading="Rating saved", link=(
        url_for("ui.results", request_id=request_id), "Back to the list"
    ), message=(
        "Your rating was saved. The list could not be shown when you rated (the database could "
        "not be reached); it shows your rating once the database is back."
    ))  # fmt: skip


@bp.get("/recommendations/<request_id>/rating-not-saved")
@login_required()
def rating_not_saved(request_id: str) -> Response:
    """Where a rating the service could not store leads (Post/Redirect/Get): it says so, with no
    database read, in words true whenever the page is shown again, and leads back to the list.

    It was the error page (503) at the post's address: Back to it, or a reload, posted the rating
    again (Chromium does it unasked), and once the service could store it, it replaced the score
    the person had given the movie since. ``keeps_form``: forms.js fills the stars in again on the
    list. Like rating_kept, it names no movie and answers only for an id issued here.
    """
    request_id = RequestIds.canonical(request_id) or request_id
    if not _services().recommendations.ids.verify(request_id):
        return _list_not_found()
    why = RATING_NOT_SAVED.get(request.args.get("why", ""), RATING_NOT_SAVED["busy"])
    return _page("ui/error.html", heading="Rating not saved", message=(
        f"Your rating was not saved: {why} when you sent it. Go back to the list and save it again "
        "in a moment."
    ), retry=(url_for("ui.results", request_id=request_id), "Back to the list"), keeps_form=True)  # fmt: skip


# --------------------------------------------------------------------------- dashboard


@bp.get("/dashboard")
@login_required(admin=True)
def dashboard_page() -> Response:
    services = _services()
    bucket = request.args.get("bucket", "day")
    bucket = bucket if bucket in dashboard.BUCKETS else "day"
    try:
        feedback = dashboard.feedback_panel(services.db, bucket)  # type: ignore[arg-type]
    except DatabaseUnavailableError as exc:
        # only this panel reads the database: the others (the serving model, the breaker, the
        # alerts) are what an operator looks at during the outage, so the page is still shown
        log_database_down(exc)
        feedback = dashboard.Panel.missing("Feedback", (
            "The database cannot be reached right now, so the feedback figures cannot be shown."
        ))  # fmt: skip
    panels = {
        "model": dashboard.serving_model(services.models),
        "history": dashboard.evaluation_history(services.settings.model_dir),
        "feedback": feedback,
        **dashboard.monitoring_panels(services),
    }
    return _page(
        "ui/dashboard.html",
        panels=panels,
        bucket=bucket,
        charts=dashboard.chart_data(panels),
        breaker_history=dashboard.breaker_history(panels["alerts"]),
    )
