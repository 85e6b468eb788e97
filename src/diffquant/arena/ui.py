"""The arena's page (Gradio), mounted on the HTTP API's FastAPI app, and the server that runs both.

The page holds its session token and the current round's id in ``gr.State`` (kept on the server,
never sent to the browser) and goes through the same :class:`~diffquant.arena.service.Arena`
calls as the HTTP API. Images are ``<img>`` tags pointing at the API's per-round image route.
"""

# No `from __future__ import annotations` here: Gradio spots the `gr.Request` parameter by its
# annotation object, so the names only needed for typing are quoted instead.
import html
import ipaddress
import os
import string
from typing import TYPE_CHECKING, Any

from diffquant.arena.errors import ArenaRefused

if TYPE_CHECKING:  # pragma: no cover
    from fastapi import FastAPI

    from diffquant.arena.service import Arena, Dealt

LETTERS = string.ascii_uppercase

CSS = """
#arena-images .arena-row { display: flex; flex-wrap: wrap; gap: 16px; justify-content: center; }
#arena-images figure { margin: 0; text-align: center; }
#arena-images img { image-rendering: pixelated; image-rendering: crisp-edges; width: min(384px, 42vw);
                    height: auto; border: 1px solid #888; }
#arena-images .arena-row.grid img { width: min(256px, 28vw); }
#arena-images figcaption { font-size: 1.4em; font-weight: bold; }
#arena-stats table { border-collapse: collapse; font-size: 0.9em; }
#arena-stats th, #arena-stats td { border-bottom: 1px solid #ccc; padding: 2px 8px; text-align: left; }
"""


def images_html(dealt: "Dealt") -> str:
    figures = "".join(
        f'<figure><img src="/api/arena/rounds/{dealt.round}/images/{slot}.png" alt="image {LETTERS[slot]}">'
        f"<figcaption>{LETTERS[slot]}</figcaption></figure>" for slot in range(dealt.slots))
    return f'<div class="arena-row {dealt.mode}" data-round-slots="{dealt.slots}">{figures}</div>'


def stats_html(arena: "Arena") -> str:
    from diffquant.arena.summary import LEGEND, read_summary, table_rows

    summary = read_summary(arena.db_path)
    if not summary.votes:
        return '<p id="arena-total" data-votes="0">No votes yet.</p>'
    headers, cells = table_rows(summary)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in line) + "</tr>" for line in cells)
    corr = "".join(f"<p>Detection vs PSNR ({html.escape(c.sweep_id)}): {html.escape(c.text)}</p>"
                   for c in summary.correlations)
    return (f'<p id="arena-total" data-votes="{summary.votes}">Results so far: {summary.votes} votes from '
            f"{summary.sessions} sessions.</p><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
            f"{corr}<p><small>{html.escape(LEGEND)}</small></p>")


def build_blocks(arena: "Arena") -> Any:
    import gradio as gr

    def deal(session: str, tally: dict[str, int]) -> tuple[Any, ...]:
        dealt = arena.deal(session)
        choices = [(LETTERS[i], i) for i in range(dealt.slots)]
        prompt = (f"**Round {tally['votes'] + 1}** · prompt: *{dealt.prompt}*\n\n{dealt.question}")
        return (dealt.round, prompt, images_html(dealt), gr.update(choices=choices, value=None))

    def start(request: gr.Request) -> tuple[Any, ...]:
        client = request.client.host if request is not None and request.client else "unknown"
        tally = {"votes": 0, "right": 0}
        try:
            session = arena.new_session(client)
            dealt_round, prompt, images, radio = deal(session, tally)
        except ArenaRefused as exc:
            return None, None, tally, "", "", gr.update(), f"Refused: {exc}", stats_html(arena)
        return session, dealt_round, tally, prompt, images, radio, "", stats_html(arena)

    def vote(session: str | None, round_id: str | None, tally: dict[str, int], choice: Any) -> tuple[Any, ...]:
        keep = (gr.update(), gr.update(), gr.update())  # prompt, images, choice stay as they are
        if session is None or round_id is None:
            return (round_id, tally, *keep, "No round on screen: wait for the page to load, or reload it.", gr.update())
        if not isinstance(choice, (int, str)) or not str(choice).isdigit():
            return (round_id, tally, *keep, "Pick an image first.", gr.update())
        try:
            result = arena.vote(session, round_id, int(choice))
        except ArenaRefused as exc:
            return (round_id, tally, *keep, f"Refused: {exc}", gr.update())
        tally = {"votes": tally["votes"] + 1, "right": tally["right"] + int(result.correct)}
        recipes = arena.recipes_of(result)
        shown = ", ".join(f"{LETTERS[i]} = {name}" for i, name in enumerate(recipes))
        verdict = "Right" if result.correct else "Wrong"
        feedback = (f"**{verdict}**: {LETTERS[result.answer_slot]} was the original ({shown}). "
                    f"You: {tally['right']} of {tally['votes']} right.")
        try:
            dealt_round, prompt, images, radio = deal(session, tally)
        except ArenaRefused as exc:
            return (None, tally, gr.update(), gr.update(), gr.update(), f"{feedback}\n\nRefused: {exc}",
                    stats_html(arena))
        return dealt_round, tally, prompt, images, radio, feedback, stats_html(arena)

    with gr.Blocks(title="diffquant arena", analytics_enabled=False) as blocks:
        session = gr.State(None)
        current = gr.State(None)
        tally = gr.State({"votes": 0, "right": 0})
        gr.Markdown("# Spot the original\nThe same prompt and seed, once from the unquantized model and once "
                    "(or more) from a quantized one, in random order. Which image is the original?")
        prompt = gr.Markdown(elem_id="arena-prompt")
        images = gr.HTML(elem_id="arena-images")
        choice = gr.Radio(choices=[], label="The original is", elem_id="arena-choice")
        button = gr.Button("Vote", variant="primary", elem_id="arena-vote")
        feedback = gr.Markdown(elem_id="arena-feedback")
        gr.Markdown("## Results so far (all voters)")
        stats = gr.HTML(elem_id="arena-stats")
        # Private: the page's own events, not a second API beside /api/arena.
        blocks.load(start, outputs=[session, current, tally, prompt, images, choice, feedback, stats],
                    api_visibility="private")
        button.click(vote, inputs=[session, current, tally, choice],
                     outputs=[current, tally, prompt, images, choice, feedback, stats], api_visibility="private")
    return blocks


def create_app(arena: "Arena", *, host: str = "127.0.0.1", port: int = 7860) -> "FastAPI":
    """The HTTP API with the Gradio page mounted at ``/``."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    from diffquant.arena.api import create_api

    app = create_api(arena)
    # Gradio's own file route must not reach the sweep's files: they travel only through the API.
    blocked = sorted({str(arena.store.path.parent)} | {str(p.parent) for p in arena.image_files()})
    return gr.mount_gradio_app(app, build_blocks(arena), path="/", server_name=host, server_port=port,
                               ssr_mode=False, css=CSS, footer_links=[], mcp_server=False, blocked_paths=blocked)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(arena: "Arena", *, host: str = "127.0.0.1", port: int = 7860) -> None:
    """Run the arena until interrupted. Never a public share link; bound to loopback by default."""
    import uvicorn

    app = create_app(arena, host=host, port=port)
    uvicorn.run(app, host=host, port=port, log_level="warning", h11_max_incomplete_event_size=MAX_HEADER_BYTES)


MAX_HEADER_BYTES = 16 * 1024
