"""Finding pickles in an export by their bytes (not their names), and refusing to load them
unless the user says they trust the files."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from diffquant.errors import DiffquantError

# Names that usually hold pickles, checked as well as the bytes (a protocol-0/1 pickle has no magic).
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def is_pickle_file(path: Path) -> bool:
    """True for a pickle (protocol 2+ starts with 0x80 and the protocol number), a torch.save zip
    (an archive holding ``*.pkl``), or a file with a pickle suffix."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return True
    with open(path, "rb") as f:
        head = f.read(9)
    if _is_safetensors(head, path.stat().st_size):
        return False  # its 8-byte header length may start with 0x80 by chance
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return True
    if head[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as archive:
                return any(name.endswith(".pkl") for name in archive.namelist())
        except zipfile.BadZipFile:
            return False
    return False


def _is_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    header_len = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 8 + header_len <= size


def pickle_files(folder: Path) -> list[Path]:
    """Every pickle file under ``folder`` (symlinked component folders included), sorted."""
    found = []
    for root, _dirs, files in os.walk(folder, followlinks=True):
        for name in files:
            path = Path(root) / name
            if path.is_file() and is_pickle_file(path):
                found.append(path)
    return sorted(found)


def refuse_pickles(folder: Path, allow_pickle: bool) -> None:
    """Raise unless ``folder`` holds no pickle or the user allowed them."""
    if allow_pickle:
        return
    found = pickle_files(folder)
    if found:
        names = ", ".join(str(p.relative_to(folder)) for p in found[:5])
        raise DiffquantError(
            f"{str(folder)!r} contains pickle files ({names}); loading a pickle can run any code its "
            "author put in it.",
            hint="load it only if you trust who made it: diffquant.load_pipeline(DIR, allow_pickle=True) "
                 "(or --allow-pickle); otherwise ask for a safetensors export")
