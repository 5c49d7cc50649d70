"""The one way a refusal reaches a client: every Problem (and every refusal of the framework's
own, turned into one) is rendered here, as JSON for programs and as an error page for people.

JSON goes to the API (/api/... paths) and to clients that ask for it (Accept: application/json
without text/html); the body is {detail, reason, ...extra}, the status and any headers
(Retry-After, WWW-Authenticate) are the Problem's. A 401 on a page sends the visitor to log in
and back to where they came from.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request

from app.rendering import render
from app.urls import API_PREFIX, request_urls
from precompute.errors import Problem

TITLES = {400: "Bad request", 401: "Log in to continue", 403: "Not allowed", 404: "Not found", 409: "Already exists",
          413: "Too large", 415: "Not an image", 422: "Cannot answer that", 429: "Slow down", 503: "Busy"}
HTTP_REASONS = {404: "not-found", 405: "method-not-allowed"}


def _is_api(request: Request) -> bool:
    return request.url.path.startswith(API_PREFIX)


def wants_json(request: Request) -> bool:
    if _is_api(request):
        return True
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "text/html" not in accept


def problem_response(request: Request, problem: Problem) -> Response:
    if wants_json(request):
        return JSONResponse(problem.body(), status_code=problem.status, headers=problem.headers or None)
    if problem.status == 401:
        return RedirectResponse(request_urls(request).login(next=request.headers.get("referer", "")), status_code=303)
    page = {"title": TITLES.get(problem.status, "Error"), "status": problem.status, **problem.body()}
    response = render(request, "error.html", page, json_url="", status_code=problem.status)
    response.headers.update(problem.headers)
    return response


def from_http_error(exc: StarletteHTTPException) -> Problem:
    """Unmatched routes and the like, in the same {detail, reason} shape as every other refusal."""
    reason = HTTP_REASONS.get(exc.status_code, f"http-{exc.status_code}")
    detail = exc.detail if isinstance(exc.detail, str) else "request refused"
    return Problem(exc.status_code, reason, detail, headers=dict(exc.headers or {}))


def install(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def problem(request: Request, exc: Problem) -> Response:
        return problem_response(request, exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return problem_response(request, from_http_error(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        # The API keeps FastAPI's list of problems in `detail`, as its OpenAPI document says;
        # a page says the same in one sentence.
        if _is_api(request) or request.url.path in ("/healthz",):
            return await request_validation_exception_handler(request, exc)
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in exc.errors())
        return problem_response(request, Problem(422, "invalid-request", problems or "the request is not valid"))
