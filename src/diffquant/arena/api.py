"""The arena's HTTP API (FastAPI, which Gradio ships): the Gradio page is mounted on this app.

    POST /api/arena/session                        -> {"session": TOKEN}
    POST /api/arena/round   (X-Arena-Session)      -> {"round", "mode", "prompt", "question", "choices", "images"}
    POST /api/arena/vote    (X-Arena-Session)  {"round": ID, "choice": SLOT}
                                                   -> {"correct", "answer", "shown": [recipe per slot], "time_s"}
    GET  /api/arena/rounds/ID/images/SLOT.png      -> the image (only slots of a dealt round)
    GET  /api/arena/stats  |  /api/arena/stats.csv -> detection per recipe

Refusals answer ``{"error": "..."}`` with a 4xx status and write nothing. Bodies over
``MAX_BODY_BYTES`` are refused (413) before they are read in full.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

# FastAPI reads the route functions' annotations, so its names must be module globals: this module
# is imported only to serve (never by `diffquant --help` or `diffquant results`).
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool

from diffquant.arena.errors import ArenaRefused

if TYPE_CHECKING:  # pragma: no cover
    from diffquant.arena.service import Arena

MAX_BODY_BYTES = 16 * 1024
SESSION_HEADER = "x-arena-session"
SLOT_RE = re.compile(r"(\d{1,3})\.png")


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``limit`` bytes, declared or streamed."""

    def __init__(self, app: Any, limit: int = MAX_BODY_BYTES) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await _too_large(send, self.limit)
            return
        seen = 0

        async def limited_receive() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLarge
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _BodyTooLarge:
            await _too_large(send, self.limit)


class _BodyTooLarge(Exception):
    pass


async def _too_large(send: Any, limit: int) -> None:
    body = json.dumps({"error": f"Request body too large (limit {limit} bytes)."}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def create_api(arena: Arena) -> FastAPI:
    """The FastAPI app with the arena's routes (no Gradio)."""
    from diffquant.arena.summary import read_summary

    app = FastAPI(title="diffquant arena", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BodyLimit)

    @app.exception_handler(ArenaRefused)
    async def refused(_: Request, exc: ArenaRefused) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    async def json_body(request: Request) -> dict[str, Any]:
        raw = await request.body()
        try:
            body = json.loads(raw or b"{}")
        except (ValueError, UnicodeDecodeError) as exc:
            raise ArenaRefused("The request body is not JSON.", 400) from exc
        if not isinstance(body, dict):
            raise ArenaRefused("The request body must be a JSON object.", 400)
        return body

    @app.post("/api/arena/session")
    async def session(request: Request) -> dict[str, str]:
        client = request.client.host if request.client else "unknown"
        return {"session": await run_in_threadpool(arena.new_session, client)}

    @app.post("/api/arena/round")
    async def deal(request: Request) -> dict[str, Any]:
        dealt = await run_in_threadpool(arena.deal, request.headers.get(SESSION_HEADER))
        return dealt.as_dict()

    @app.post("/api/arena/vote")
    async def vote(request: Request) -> dict[str, Any]:
        body = await json_body(request)
        result = await run_in_threadpool(arena.vote, request.headers.get(SESSION_HEADER), body.get("round"),
                                         body.get("choice"))
        return {"correct": result.correct, "answer": result.answer_slot, "choice": result.choice,
                "shown": arena.recipes_of(result), "time_s": round(result.time_s, 3)}

    @app.get("/api/arena/rounds/{round_id}/images/{slot_png}")
    async def image(round_id: str, slot_png: str) -> Response:
        match = SLOT_RE.fullmatch(slot_png)
        if not match:
            raise ArenaRefused("Malformed image slot.", 400)
        png = await run_in_threadpool(arena.image_png, round_id, int(match.group(1)))
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/api/arena/stats")
    async def stats() -> Response:
        summary = await run_in_threadpool(read_summary, arena.db_path)
        return Response(summary.to_json(), media_type="application/json")

    @app.get("/api/arena/stats.csv")
    async def stats_csv() -> PlainTextResponse:
        summary = await run_in_threadpool(read_summary, arena.db_path)
        return PlainTextResponse(summary.to_csv(), media_type="text/csv")

    return app
