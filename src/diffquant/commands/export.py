"""``diffquant export gguf``: write a pipeline component (the transformer) as a GGUF file."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

# Listed here (not imported from gguf_writer) so that building the parser imports nothing heavy.
TYPES_HELP = ("F32, F16, BF16, Q8_0, Q6_K, Q5_K, Q5_1, Q5_0, Q4_K, Q4_1, Q4_0, Q3_K, Q2_K, or a named mix "
              "(Q2_K_M, Q3_K_S, Q3_K_M, Q3_K_L, Q4_K_S, Q4_K_M, Q5_K_S, Q5_K_M: docs/gguf.md)")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "export", help="export a model to another format (gguf)",
        description="Export a pipeline component to a file other tools load.")
    formats = parser.add_subparsers(dest="format", metavar="FORMAT")
    g = formats.add_parser(
        "gguf", help="write a component (default: the transformer) as a GGUF file, K-quants included",
        description="Write a diffusers model as GGUF, K-quants included.\n\n"
                    "Big 2-D weights get --type; 1-D and tiny tensors stay F32; the embedders and the\n"
                    "final layer keep the source's half precision (see --no-default-keep); rows that\n"
                    "are not a whole number of blocks fall back like llama-quantize. Load the file with\n"
                    "  FluxTransformer2DModel.from_single_file(path, config=<pipeline>,\n"
                    "      subfolder='transformer', quantization_config=GGUFQuantizationConfig(...))",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  diffquant export gguf black-forest-labs/FLUX.1-dev --type Q4_K -o flux1-dev-Q4_K.gguf\n"
               "  diffquant export gguf zoo:flux-dev-slice --type Q2_K --keep 'norm,*.mod*=Q8_0' "
               "-o slice-Q2_K.gguf\n"
               "  diffquant export gguf ./my-flux --type Q5_K --layout bfl   # ComfyUI-style keys")
    g.add_argument("model", help="local pipeline folder, single model folder, Hub id (org/name) or zoo:NAME")
    g.add_argument("--type", "-t", dest="qtype", required=True, metavar="TYPE",
                   help=f"GGUF type of the large weights: {TYPES_HELP}")
    g.add_argument("-o", "--output", type=Path, default=None,
                   help="output .gguf file (default: <model>-<component>-<TYPE>.gguf here)")
    g.add_argument("--component", default="transformer", help="pipeline component (default: transformer)")
    g.add_argument("--layout", choices=("diffusers", "bfl"), default="diffusers",
                   help="tensor names: diffusers' own (default; diffusers loads them with config=) or "
                        "FLUX's original black-forest-labs names (ComfyUI; diffusers only at width 3072)")
    g.add_argument("--keep", default=None, metavar="PATTERNS",
                   help="comma-separated overrides PATTERN[=TYPE]: an fnmatch pattern over the full tensor "
                        "name, or a plain word matched anywhere in it; without =TYPE the tensor keeps the "
                        "source's half precision. First match wins. E.g. 'norm,*.mod*=Q8_0'")
    g.add_argument("--no-default-keep", action="store_true",
                   help="also quantize the embedders and the final layer (kept by default)")
    g.add_argument("--threads", type=int, default=None,
                   help="quantize this many chunks in parallel (default: $DIFFQUANT_GGUF_THREADS or all CPUs)")
    g.add_argument("--quiet", "-q", action="store_true", help="print only the summary, not every tensor")
    g.add_argument("--card", action="store_true",
                   help="also write the model's config.json and a model card (README.md) beside the file, so that "
                        "from_single_file(file, config=folder) works; needs -o in a folder of its own")
    g.add_argument("--card-from", type=Path, default=None, metavar="F.db",
                   help="like --card, with the measured table and samples of this model's gguf-<type> runs "
                        "in this results database")
    g.add_argument("--base-model", default=None, metavar="ORG/NAME",
                   help="Hub id the card names as base_model (default: the model, if a Hub id)")
    g.set_defaults(func=run)
    parser.set_defaults(func=lambda args: _missing_format(parser))
    return parser


def _missing_format(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def resolve_source(model: str, component: str) -> Path:
    """A local folder as is; zoo:NAME built on first use; otherwise a Hub id, downloading only
    the model index and the one component."""
    from diffquant.errors import DiffquantError
    from diffquant.zoo import ZOO_PREFIX

    if model.startswith(ZOO_PREFIX):
        from diffquant.zoo import ensure_model

        return ensure_model(model[len(ZOO_PREFIX):])
    path = Path(model).expanduser()
    if path.exists():
        return path
    if model.count("/") != 1 or model.startswith((".", "/", "~")):
        raise DiffquantError(f"Cannot find model {model!r}: no such folder.",
                             hint="give a local folder, a Hub id (org/name) or zoo:NAME")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model, allow_patterns=["model_index.json", f"{component}/*"]))
    except Exception as exc:  # noqa: BLE001 - every Hub failure means the same to the user
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        raise DiffquantError(
            f"Could not get {model!r} from the Hugging Face Hub ({type(exc).__name__}).",
            hint=("HF_HUB_OFFLINE=1 is set or the Hub is unreachable" if offline else
                  "check the id, the network, and `hf auth login` for gated models")
                 + "; or download the model and pass its local folder") from None


def default_output(model: str, component: str, qtype: str) -> Path:
    stem = model.rstrip("/").replace("zoo:", "").split("/")[-1] or "model"
    return Path(f"{stem}-{component}-{qtype.upper()}.gguf")


def run(args: argparse.Namespace) -> int:
    from diffquant.gguf_writer import export_gguf
    from diffquant.gguf_writer.mixes import is_mix
    from diffquant.gguf_writer.quantize import normalize_type

    # fail fast on a typo, before any download
    qtype = args.qtype.strip().upper() if is_mix(args.qtype) else normalize_type(args.qtype)
    card = args.card or args.card_from is not None
    if card:
        from diffquant.errors import DiffquantError
        from diffquant.export.gguf_card import check_card_folder

        if args.output is None:
            raise DiffquantError("--card needs -o NEWDIR/name.gguf: the card, config.json and images/ go "
                                 "beside the file, in a folder of its own.")
        if args.card_from is not None and not args.card_from.is_file():
            raise DiffquantError(f"No results database at {str(args.card_from)!r}.",
                                 hint="give --card-from the --db file of a `diffquant bench` run")
        check_card_folder(args.output)
    model_dir = resolve_source(args.model, args.component)
    out = args.output or default_output(args.model, args.component, qtype)
    interactive = sys.stderr.isatty() and not args.quiet

    def progress(i: int, total: int, name: str, t: str) -> None:
        if interactive:
            print(f"\r[{i + 1}/{total}] {name[:60]:60} {t:5}", end="", file=sys.stderr, flush=True)

    result = export_gguf(model_dir, out, qtype, component=args.component, layout=args.layout,
                         keep=args.keep, default_keep=not args.no_default_keep,
                         source_name=args.model, progress=progress, threads=args.threads)
    if interactive:
        print("\r" + " " * 80 + "\r", end="", file=sys.stderr)
    if not args.quiet:
        width = max(len(n) for n in result.tensor_types)
        for name, t in result.tensor_types.items():
            reason = result.reasons.get(name, "")
            print(f"{name:{width}}  {t:5}  {reason}".rstrip())
        print()
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if card:
        from diffquant.export.gguf_card import write_gguf_card

        path = write_gguf_card(Path(result.out_path), model_ref=args.model, model_dir=model_dir,
                               component=args.component, qtype=qtype, keep=args.keep, layout=result.layout,
                               bytes_written=result.bytes_written, type_counts=result.type_counts(),
                               card_from=args.card_from, base_model=args.base_model)
        print(f"wrote {path} and {path.parent / 'config.json'}")
    counts = ", ".join(f"{n} {t}" for t, n in sorted(result.type_counts().items(), key=lambda kv: -kv[1]))
    ratio = result.source_bytes / result.bytes_written if result.bytes_written else 0.0
    print(f"wrote {result.out_path} ({_mib(result.bytes_written)}, {ratio:.2f}x smaller than the "
          f"{_mib(result.source_bytes)} source) in {result.seconds:.1f} s; "
          f"{len(result.tensor_types)} tensors: {counts}; layout {result.layout}")
    return 0


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"
