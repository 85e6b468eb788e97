"""The arena's logic, shared by the HTTP API and the Gradio page: deal a round, take a vote, serve
a round's image. Every input from a client is checked here before anything is read or written:
tokens must look like tokens, choices must be integers in range, and each session has a rate limit.

The client never sees an image's database id or path: a round's images are fetched by the round's
unguessable id and a slot number, and re-encoded (no PNG text chunks, which carry the recipe).
"""

from __future__ import annotations

import io
import random
import re
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffquant.arena.errors import ArenaRefused
from diffquant.arena.pool import MODES, Pool, build_pool, image_path
from diffquant.arena.store import ArenaStore, RoundRecord, VoteResult
from diffquant.errors import unknown_choice

TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")
DISPLAY_PX = 384  # small images are scaled up (nearest neighbour) to about this size


@dataclass(frozen=True)
class ArenaSettings:
    mode: str = "pairwise"
    reference: str = "bf16"
    recipes: tuple[str, ...] | None = None
    sweep: str | None = None
    rate_per_s: float = 2.0  # sustained rounds + votes per session per second (a person needs ~1 s a vote)
    burst: int = 20
    sessions_per_min: float = 60.0  # new sessions per client address
    display_px: int = DISPLAY_PX


class RateLimiter:
    """Token buckets by key; thread-safe. ``allow`` takes one token or says no."""

    def __init__(self, rate_per_s: float, burst: float, max_keys: int = 100_000) -> None:
        self.rate, self.burst, self.max_keys = rate_per_s, burst, max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def allow(self, key: str) -> bool:
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.pop(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            ok = tokens >= 1.0
            self._buckets[key] = (tokens - 1.0 if ok else tokens, now)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)  # forget the longest-idle key
            return ok


@dataclass(frozen=True)
class Dealt:
    """A round as the client sees it: no recipe, no image id, no path."""

    round: str
    mode: str
    prompt: str
    slots: int
    question: str

    def as_dict(self, prefix: str = "/api/arena") -> dict[str, Any]:
        return {"round": self.round, "mode": self.mode, "prompt": self.prompt, "choices": self.slots,
                "question": self.question,
                "images": [f"{prefix}/rounds/{self.round}/images/{slot}.png" for slot in range(self.slots)]}


@dataclass
class Arena:
    db_path: Path
    settings: ArenaSettings = field(default_factory=ArenaSettings)
    rng: random.Random = field(default_factory=secrets.SystemRandom)

    def __post_init__(self) -> None:
        from diffquant.quality.store import load_runs, open_existing

        if self.settings.mode not in MODES:
            raise unknown_choice("arena mode", self.settings.mode, MODES)
        with open_existing(Path(self.db_path)) as db:
            runs = load_runs(db)
        self.pool: Pool = build_pool(runs, reference=self.settings.reference, recipes=self.settings.recipes,
                                     sweep=self.settings.sweep)
        self.store = ArenaStore(self.db_path)
        self._limits = RateLimiter(self.settings.rate_per_s, self.settings.burst)
        self._session_limits = RateLimiter(self.settings.sessions_per_min / 60.0,
                                           max(1.0, self.settings.sessions_per_min / 2))
        self._png_cache: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self._cache_lock = threading.Lock()

    # -- checks ------------------------------------------------------------------------------
    def _session(self, token: Any) -> int:
        if not isinstance(token, str) or not TOKEN_RE.fullmatch(token):
            raise ArenaRefused("Missing or malformed session token.", 401,
                               hint="start a session (POST /api/arena/session) and send its token in the "
                                    "X-Arena-Session header")
        session_id = self.store.session_id(token)
        if session_id is None:
            raise ArenaRefused("Unknown session.", 401, hint="start a session: POST /api/arena/session")
        if not self._limits.allow(f"s{session_id}"):
            raise ArenaRefused(f"Too many requests from this session (limit {self.settings.rate_per_s:g}/s, "
                               f"bursts of {self.settings.burst}).", 429, hint="slow down and try again")
        return session_id

    @staticmethod
    def _round_token(token: Any) -> str:
        if not isinstance(token, str) or not TOKEN_RE.fullmatch(token):
            raise ArenaRefused("Malformed round id.", 400, hint="send the 'round' value a dealt round returned")
        return token

    # -- the three things a client does -------------------------------------------------------
    def new_session(self, client: str = "local") -> str:
        if not self._session_limits.allow(f"c{client}"):
            raise ArenaRefused("Too many new sessions from this address.", 429, hint="reuse your session token")
        return self.store.new_session()[1]

    def deal(self, session_token: Any) -> Dealt:
        session_id = self._session(session_token)
        rng = self.rng
        if self.settings.mode == "pairwise":
            pair = rng.choice(self.pool.pairs[rng.choice(self.pool.run_ids)])  # recipes equally often
            shown = [(pair.reference_run_id, pair.reference_image_id), (pair.run_id, pair.image_id)]
            ref_run, prompt, pi, seed = pair.reference_run_id, pair.prompt, pair.prompt_index, pair.seed
            question = "One of these two images comes from the original model. Which one?"
        else:
            grid = rng.choice(self.pool.grids)
            shown = [(grid.reference_run_id, grid.reference_image_id), *grid.entries]
            ref_run, prompt, pi, seed = grid.reference_run_id, grid.prompt, grid.prompt_index, grid.seed
            question = f"One of these {len(shown)} images comes from the original model. Which one?"
        rng.shuffle(shown)
        answer = next(i for i, (run_id, _) in enumerate(shown) if run_id == ref_run)
        record: RoundRecord = self.store.new_round(session_id, self.settings.mode, ref_run, prompt, pi, seed, shown,
                                                   answer)
        return Dealt(record.token, record.mode, prompt, record.slots, question)

    def vote(self, session_token: Any, round_token: Any, choice: Any) -> VoteResult:
        if isinstance(choice, bool) or not isinstance(choice, int):
            raise ArenaRefused(f"The choice must be an integer slot number, not {type(choice).__name__}.", 422)
        token = self._round_token(round_token)
        session_id = self._session(session_token)
        return self.store.vote(session_id, token, choice)

    def image_files(self) -> set[Path]:
        """Every image file the pool may show."""
        rows = self.store._conn().execute("SELECT id, path FROM images").fetchall()
        return {image_path(str(path), self.store.path) for _, path in rows}

    def recipes_of(self, result: VoteResult) -> list[str]:
        return [self.pool.recipes.get(run_id, f"run {run_id}") for run_id in result.run_ids]

    # -- images ------------------------------------------------------------------------------
    def image_png(self, round_token: Any, slot: Any) -> bytes:
        """One slot of a round as a fresh PNG, scaled up without smoothing when small."""
        token = self._round_token(round_token)
        if isinstance(slot, bool) or not isinstance(slot, int) or slot < 0:
            raise ArenaRefused("Malformed image slot.", 400)
        found = self.store.round_image(token, slot)
        if found is None:
            raise ArenaRefused("No such image.", 404)
        image_id, stored = found
        with self._cache_lock:
            cached = self._png_cache.get((image_id, self.settings.display_px))
        if cached is not None:
            return cached
        png = render_png(image_path(stored, self.store.path), self.settings.display_px)
        with self._cache_lock:
            self._png_cache[(image_id, self.settings.display_px)] = png
            while len(self._png_cache) > 256:
                self._png_cache.popitem(last=False)
        return png


def render_png(path: Path, display_px: int) -> bytes:
    """Re-encode (dropping metadata) and scale by a whole factor with nearest neighbour."""
    from PIL import Image

    if not path.is_file():
        raise ArenaRefused("The image file of this round is missing on the server.", 410,
                           hint="the sweep's image folder was moved or deleted")
    with Image.open(path) as img:
        img = img.convert("RGB")
    factor = max(1, display_px // max(img.size))
    if factor > 1:
        img = img.resize((img.width * factor, img.height * factor), Image.Resampling.NEAREST)
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()
