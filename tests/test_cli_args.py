"""The shared value parsers (diffquant.arguments): every command reads sizes, steps, seeds, devices
and budgets the same way, refuses bad ones with an example, and applies the model's size limits
before anything runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from diffquant import arguments as A
from diffquant.cli import build_parser, main
from diffquant.errors import DiffquantError


def refused(fn, text: str) -> str:
    with pytest.raises(DiffquantError) as info:
        fn(text)
    return str(info.value)


def test_size_is_width_by_height_everywhere() -> None:
    assert A.parse_size("1024x768") == (1024, 768)
    assert A.parse_size("64") == (64, 64) == A.parse_size(" 64X64 ") == A.parse_size("64×64")
    for bad, fragment in (("0x64", "out of range"), ("64x", "not a whole number"), ("sixty", "not a whole number"),
                          ("1x2x3", "Cannot read image size"), ("99999", "out of range"), ("-64", "out of range")):
        message = refused(A.parse_size, bad)
        assert fragment in message and "--size 1024x1024" in message, message


def test_generate_bench_and_matrix_read_size_alike() -> None:
    parser = build_parser()
    generate = parser.parse_args(["generate", "m", "--prompt", "p", "--size", "64"])
    bench = parser.parse_args(["bench", "m", "--size", "64"])
    matrix = parser.parse_args(["matrix", "m", "--size", "64"])
    assert generate.size == bench.size == matrix.size == (64, 64)
    wide = parser.parse_args(["bench", "m", "--size", "128x64"])
    assert wide.size == (128, 64) == parser.parse_args(["generate", "m", "--prompt", "p", "--size", "128x64"]).size


@pytest.mark.parametrize("command", [["generate", "m", "--prompt", "p"], ["bench", "m"], ["matrix", "m"]])
def test_zero_steps_refused_by_every_command(command: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([*command, "--steps", "0"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--steps must be between 1 and 1000; got 0" in err and "--steps 28" in err


def test_steps_seeds_device() -> None:
    assert A.parse_steps("28") == 28
    assert "not a whole number" in refused(A.parse_steps, "2.5")
    assert A.parse_seeds("0,1, 2") == [0, 1, 2] and A.parse_seed("7") == 7
    assert "given twice" in refused(A.parse_seeds, "0,0")
    assert "out of range" in refused(A.parse_seeds, "-1")
    assert "No seeds" in refused(A.parse_seeds, " , ")
    assert "Give one seed" in refused(A.parse_seed, "1,2")
    assert A.parse_device("CUDA") == "cuda" and A.parse_device("cuda:1") == "cuda:1" and A.parse_device("cpu") == "cpu"
    assert "Valid choices: cpu, cuda, cuda:N" in refused(A.parse_device, "gpu")
    assert A.parse_guidance("0") == 0.0 and "inf" in refused(A.parse_guidance, "inf")
    assert "positive" in refused(A.parse_timeout, "0")
    assert A.parse_count("0") == 0


def test_budget_units() -> None:
    gib16 = 16 * 2**30
    for text in ("16GB", "16 GiB", "16gb", "16G", "16384MiB", "16384 mb"):
        assert A.parse_budget(text) == gib16, text
    assert A.parse_budget("1.5e10") == 15_000_000_000
    assert A.parse_budget("512") == 512
    message = refused(A.parse_budget, "sixteen")
    assert "Cannot read memory budget 'sixteen'" in message and "--budget 16GB" in message
    assert "unknown unit 'gbs'" in refused(A.parse_budget, "16 GBs")
    assert "out of range" in refused(A.parse_budget, "0GB")
    assert "out of range" in refused(A.parse_budget, "1e400")


def _pipeline(folder: Path, levels: int, patch: int | None) -> Path:
    (folder / "vae").mkdir(parents=True)
    (folder / "vae" / "config.json").write_text(json.dumps({"block_out_channels": [32] * levels}))
    if patch is not None:
        (folder / "transformer").mkdir()
        (folder / "transformer" / "config.json").write_text(json.dumps({"patch_size": patch}))
    return folder


def test_size_limits_come_from_the_models_config(tmp_path: Path) -> None:
    flux = _pipeline(tmp_path / "flux", 4, 1)  # FLUX: VAE scale 8, latents packed 2×2
    sd3 = _pipeline(tmp_path / "sd3", 4, 2)  # SD3: VAE scale 8, patch 2
    shapes = _pipeline(tmp_path / "shapes", 3, 1)  # a 3-level VAE: scale 4
    assert A.size_multiple(flux) == A.size_multiple(sd3) == 16 and A.size_multiple(shapes) == 8
    assert A.size_multiple(tmp_path) is None
    A.check_size_for_model(flux, 64, 1024)
    A.check_size_for_model(shapes, 40, 40)
    with pytest.raises(DiffquantError, match="width 60 is not a multiple of 16") as info:
        A.check_size_for_model(flux, 60, 64)
    assert "--size 64x64" in str(info.value)
    with pytest.raises(DiffquantError, match="height 36 is not a multiple of 8"):
        A.check_size_for_model(shapes, 40, 36)


def test_bench_refuses_a_bad_size_before_any_worker(tmp_path: Path, capsys) -> None:
    db = tmp_path / "r.db"
    assert main(["bench", "zoo:tiny-flux", "--size", "40", "--db", str(db), "--device", "cpu", "--no-report"]) == 2
    assert "multiple of 16" in capsys.readouterr().err
    assert not db.exists()  # nothing ran, nothing recorded


def test_argparse_shows_the_example(capsys) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--seeds", "a,b"])
    err = capsys.readouterr().err
    assert "argument --seeds" in err and "--seeds 0,1,2" in err and "Traceback" not in err
