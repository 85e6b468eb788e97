"""The model card (``README.md``) of an export, in Hugging Face's format: YAML metadata (base
model, library, pipeline tag, tags, the quantization settings under ``diffquant``) and a body with
the recipe, the weight bytes per component, how to load the folder with and without diffquant,
the versions, and — from a results database — the measured table and sample images beside the
reference's. Written with ``huggingface_hub.ModelCard``; validated offline by :func:`validate_card`.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

from diffquant.errors import DiffquantError
from diffquant.export.measured import Measured, find_measured
from diffquant.export.safety import pickle_files
from diffquant.export.usage import Export, diffquant_code, plain_code, plain_support, read_export

CARD = "README.md"
IMAGES = "images"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
RELATIONS = ("adapter", "merge", "quantized", "finetune")
_QUALITY_ORDER = ("psnr", "ssim", "ms-ssim", "lpips", "clip-score", "shapes-adherence", "shapes-shape",
                  "shapes-all-correct", "latent-rel-error")


def hub_base_model(source: str) -> str | None:
    """The source as a Hub id, when it is one (zoo models and local folders have none)."""
    if source.startswith("zoo:") or Path(source).expanduser().exists():
        return None
    return source if HUB_ID.match(source) else None


def write_card(folder: Path, *, card_from: Path | None = None, base_model: str | None = None,
               name: str | None = None) -> Path:
    """(Re)write ``folder/README.md`` (and its sample images, with ``card_from``); returns its path.
    ``name`` is the folder's final name when it is written under a temporary one."""
    from diffquant.atomic import write_text_atomic as write_atomic

    folder = Path(folder)
    export = read_export(folder, name)
    measured = None
    if card_from is not None:
        meta = export.meta
        measured = find_measured(Path(card_from), meta["source_model"], meta["recipe"], meta["recipe_hash"])
    images = _copy_samples(folder, measured) if measured else []
    card = build_card(export, measured=measured, base_model=base_model, images=images)
    write_atomic(folder / CARD, str(card))
    return folder / CARD


def _copy_samples(folder: Path, measured: Measured) -> list[tuple[str, str | None, str, int]]:
    """Copy the run's and the reference's images into ``images/``; (mine, reference, prompt, seed)."""
    target = folder / IMAGES
    target.mkdir(exist_ok=True)
    for old in target.glob("sample*-*.png"):  # a previous card's samples; nothing else is touched
        old.unlink()
    out = []
    for i, pair in enumerate(measured.samples):
        if not pair.image.is_file():
            continue
        mine = f"{IMAGES}/sample{i}-quantized.png"
        shutil.copy2(pair.image, folder / mine)
        ref = None
        if pair.reference is not None and pair.reference.is_file():
            ref = f"{IMAGES}/sample{i}-reference.png"
            shutil.copy2(pair.reference, folder / ref)
        out.append((mine, ref, pair.prompt, pair.seed))
    return out


def card_metadata(export: Export, measured: Measured | None = None, base_model: str | None = None) -> dict[str, Any]:
    meta = export.meta
    base = base_model or hub_base_model(meta["source_model"])
    if base is not None and not HUB_ID.match(base):
        raise DiffquantError(f"--base-model {base!r} is not a Hub id (org/name).", hint="e.g. black-forest-labs/FLUX.1-dev")
    tags = ["diffquant", "quantized", f"diffusers:{export.pipeline_class}"]
    components: dict[str, Any] = {}
    weights = meta.get("weights") or {}
    for c in export.quantized():
        assert c.spec is not None
        tags += [_backend_tag(c.backend or ""), f"{c.backend}-{c.spec['type']}"]
        components[c.name] = {"backend": c.backend, "type": c.spec["type"], "options": c.spec.get("options") or {},
                              "skip_modules": c.spec.get("skip_modules") or [], "format": c.format,
                              "weight_bytes": (weights.get(c.name) or {}).get("weight_bytes")}
    data: dict[str, Any] = {
        "library_name": "diffusers", "pipeline_tag": "text-to-image", "tags": list(dict.fromkeys(tags)),
        "diffquant": {"recipe": meta["recipe_name"], "recipe_hash": meta["recipe_hash"],
                      "source_model": meta["source_model"], "dtype": export.dtype,
                      "diffquant_version": meta.get("diffquant_version"), "quantization": components},
    }
    if base is not None:
        data["base_model"], data["base_model_relation"] = base, "quantized"
    if measured is not None:
        data["diffquant"]["measured"] = measured_metadata(measured)
    return data


def measured_metadata(m: Measured) -> dict[str, Any]:
    """The measured numbers exactly as stored (memory MiB, seconds, ratios, quality with CIs)."""
    from diffquant.store.summary import COLUMNS

    columns = {}
    for column in COLUMNS:
        value = m.row.get(column.key)
        if value is not None:
            # a CPU run recorded before the model's own counters shows the whole-process figure
            counter = column.process_counter(m.device) if m.row.get(f"{column.key}.fallback") \
                else column.counter(m.device)
            columns[column.key] = {"value": value, "counter": counter,
                                   "ratio_to_reference": m.row.get(f"{column.key}.ratio")}
    quality = {name: {"mean": q.mean, "ci_low": q.ci_low, "ci_high": q.ci_high, "unit": q.unit, "n": q.n,
                      "ci_level": q.ci_level, "delta_mean": q.delta_mean, "higher_is_better": q.higher_is_better}
               for name, q in m.quality.items()}
    return {"database": m.db_path.name, "run_id": m.run_id, "sweep_id": m.sweep_id, "recipe": m.recipe,
            "device": m.device, "reference_recipe": m.reference_recipe, "reference_run_id": m.reference_run_id,
            "steps": m.settings.get("steps"), "height": m.settings.get("height"), "width": m.settings.get("width"),
            "prompts": len(m.settings.get("prompts") or []), "seeds": m.settings.get("seeds"),
            "columns": columns, "quality": _jsonable(quality)}


def _jsonable(value: Any) -> Any:
    """YAML-safe floats: infinities (PSNR of identical images) become strings."""
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def build_card(export: Export, *, measured: Measured | None = None, base_model: str | None = None,
               images: list[tuple[str, str | None, str, int]] | None = None) -> Any:
    from huggingface_hub import ModelCard, ModelCardData

    data = card_metadata(export, measured, base_model)
    body = _body(export, data, measured, images or [])
    card_data = ModelCardData(**data)
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}")


def _body(export: Export, data: dict[str, Any], measured: Measured | None,
          images: list[tuple[str, str | None, str, int]]) -> str:
    meta = export.meta
    source, recipe = meta["source_model"], meta["recipe_name"]
    lines = [f"# {export.label}: `{source}` quantized with `{recipe}`", "",
             f"Made by diffquant {meta.get('diffquant_version', '')} from `{source}`"
             + (f" (base model [{data['base_model']}](https://huggingface.co/{data['base_model']}))"
                if data.get("base_model") else "")
             + f" with the recipe `{recipe}` (hash `{meta['recipe_hash']}`, compute dtype {export.dtype}), "
             f"on {meta.get('device', 'cpu')}.", ""]
    lines += ["## Quantization", "", "| component | class | quantization | stored as | weight bytes | bits/weight |",
              "|---|---|---|---|---|---|"]
    weights = meta.get("weights") or {}
    for c in export.components:
        w = weights.get(c.name)
        if w is None and c.format == "native" and c.spec is None:
            continue  # tokenizers, scheduler
        quant = f"{c.backend}-{c.spec['type']}" if c.spec else "none"
        opts = ", ".join(f"{k}={v}" for k, v in sorted((c.spec or {}).get("options", {}).items()))
        skip = "|".join((c.spec or {}).get("skip_modules") or [])
        quant += f" ({opts})" if opts else ""
        quant += f", skip {skip}" if skip else ""
        size = f"{w['weight_bytes']:,} ({w['weight_bytes'] / 2**20:.1f} MiB)" if w else "-"
        bits = f"{w['bits_per_weight']:.2f}" if w else "-"
        lines.append(f"| {c.name} | {c.class_name} | {quant} | {_format_text(c.format, c.backend)} | {size} | {bits} |")
    lines += ["", ("Weight bytes are the tensors' storage as loaded (quantization scales included), counted "
                  "by `diffquant.inspect.component_stats`."), ""]
    lines += _loading_section(export)
    if measured is not None:
        lines += _measured_section(measured, images)
    lines += ["## Versions", "", "| package | version |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in sorted((meta.get("versions") or {}).items()) if v]
    lines += ["", ("Other versions may load the files differently: the libraries' quantized formats change "
                  "between releases."), ""]
    return "\n".join(lines)


def _backend_tag(backend: str) -> str:
    from diffquant.recipes.catalog import BACKENDS

    entry = BACKENDS.get(backend)
    return entry.tag if entry else backend


def _format_text(fmt: str, backend: str | None = None) -> str:
    """A format's files in words: the backend's own formats (its module's ``formats``), else the library's."""
    if backend is not None:
        from diffquant.backends import get_backend

        own = get_backend(backend).formats.get(fmt)
        if own:
            return own
    return {"native": "safetensors (the library's own save)", "native-pickle": "**pickle (.bin)**"}.get(fmt, fmt)


def _loading_section(export: Export) -> list[str]:
    lines = ["## How to load", "", "### With diffusers / transformers (no diffquant)", ""]
    cpu, cuda = plain_code(export, "cpu"), plain_code(export, "cuda")
    if cpu is not None:
        lines += ["On CPU or GPU (add `pipe.to(\"cuda\")` on a GPU):", "", "```python", cpu.rstrip(), "```", ""]
    elif cuda is not None:
        lines += ["**On a CUDA GPU only** (not on CPU: see the table):", "", "```python", cuda.rstrip(), "```", ""]
    else:
        lines += ["Plain diffusers cannot load this export (see the table); use diffquant below.", ""]
    lines += ["| component | CPU | CUDA | loaded by | why not |", "|---|---|---|---|---|"]
    for c in export.components:
        if c.spec is None and c.format == "native":
            continue
        s = plain_support(c)
        lines.append(f"| {c.name} | {'yes' if s.cpu else 'no'} | {'yes' if s.cuda else 'no'} | {s.how} | "
                     f"{s.why_not or '-'} |")
    lines += ["", "Unquantized components load with `from_pretrained` everywhere.", "",
              "### With diffquant (CPU or CUDA, every backend)", "", "```python", diffquant_code(export).rstrip(),
              "```", "", "or `diffquant generate FOLDER --prompt \"...\"`.", ""]
    pickles = pickle_files(export.folder)
    if pickles:
        names = ", ".join(f"`{p.relative_to(export.folder)}`" for p in pickles)
        lines += ["### Pickle files", "", (f"This export contains pickle files ({names}): the installed "
                  "libraries offered no safe format for them. Loading a pickle can run code; diffquant refuses "
                  "it unless you pass `allow_pickle=True`."), ""]
    else:
        lines += ["Every weight file is safetensors or GGUF: no pickle.", ""]
    return lines


def _measured_section(m: Measured, images: list[tuple[str, str | None, str, int]]) -> list[str]:
    from diffquant.figures import fmt_ratio, format_estimate, metric_title
    from diffquant.store.summary import COLUMNS, counters_legend, format_cell

    s = m.settings
    lines = ["## Measured", "",
             (f"From run {m.run_id} (`{m.recipe}`, sweep `{m.sweep_id}`) of the results database `{m.db_path.name}`, "
             f"on {m.device}: {s.get('steps')} steps at {s.get('width')}×{s.get('height')}, "
             f"{len(s.get('prompts') or [])} prompts × seeds {s.get('seeds')}; ratios against "
             f"`{m.reference_recipe or 'none'}` (run {m.reference_run_id}) of the same sweep."), "",
             "| | " + " | ".join(c.title for c in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for label, row in (("this recipe", m.row), (f"reference ({m.reference_recipe})", m.reference_row)):
        if row is None:
            continue
        cells = []
        for c in COLUMNS:
            text = format_cell(c.kind, row.get(c.key))
            ratio = row.get(f"{c.key}.ratio")
            if ratio is not None and row is m.row:
                text += f" ({fmt_ratio(ratio)})"
            cells.append(text)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", *[f"- {line}" for line in counters_legend([m.device])], ""]
    if m.quality:
        lines += ["| quality metric | mean [95% CI] | vs reference |", "|---|---|---|"]
        for name in sorted(m.quality, key=lambda n: (_QUALITY_ORDER.index(n) if n in _QUALITY_ORDER else 99, n)):
            q = m.quality[name]
            est = format_estimate(q.mean, q.ci_low, q.ci_high, q.unit)
            delta = (format_estimate(q.delta_mean, q.delta_ci_low, q.delta_ci_high, q.unit, signed=True)
                     if q.delta_mean is not None else "compared with the reference's images")
            arrow = "higher is better" if q.higher_is_better else "lower is better"
            lines.append(f"| {metric_title(name)} ({arrow}, n={q.n}) | {est} | {delta} |")
        lines.append("")
    else:
        lines += ["No quality scores stored for this run (`diffquant score --db FILE`).", ""]
    if images:
        lines += ["### Samples", "", f"| prompt (seed) | reference ({m.reference_recipe}) | this recipe |",
                  "|---|---|---|"]
        for mine, ref, prompt, seed in images:
            ref_cell = f"![reference]({ref})" if ref else "-"
            lines.append(f"| {prompt.replace('|', '/')} ({seed}) | {ref_cell} | ![{m.recipe}]({mine}) |")
        lines.append("")
    return lines


def validate_card(path: Path) -> Any:
    """Parse ``path`` with ``huggingface_hub.ModelCard`` and check its metadata offline (the Hub's own
    ``ModelCard.validate`` needs the network); returns the card, raises DiffquantError listing problems."""
    from huggingface_hub import ModelCard, ModelCardData

    card = ModelCard.load(Path(path))
    data = card.data.to_dict()
    problems = []
    if data.get("library_name") != "diffusers":
        problems.append(f"library_name is {data.get('library_name')!r}, not 'diffusers'")
    if data.get("pipeline_tag") != "text-to-image":
        problems.append(f"pipeline_tag is {data.get('pipeline_tag')!r}, not 'text-to-image'")
    tags = data.get("tags")
    if not isinstance(tags, list) or not tags or not all(isinstance(t, str) and t for t in tags):
        problems.append(f"tags must be a non-empty list of strings, got {tags!r}")
    base = data.get("base_model")
    if base is not None and (not isinstance(base, str) or not HUB_ID.match(base)):
        problems.append(f"base_model {base!r} is not a Hub id")
    if base is not None and data.get("base_model_relation") not in RELATIONS:
        problems.append(f"base_model_relation {data.get('base_model_relation')!r} not in {RELATIONS}")
    dq = data.get("diffquant")
    if not isinstance(dq, dict) or not {"recipe", "recipe_hash", "quantization"} <= set(dq):
        problems.append("diffquant metadata (recipe, recipe_hash, quantization) missing")
    if ModelCardData(**data).to_dict() != data:
        problems.append("metadata does not round-trip through ModelCardData")
    if problems:
        raise DiffquantError(f"{path}: invalid model card metadata: " + "; ".join(problems),
                             hint="rewrite it with `diffquant card FOLDER`")
    return card
