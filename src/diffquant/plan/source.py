"""A model's configuration files, and nothing else: the folder ``plan`` instantiates from.

- a local pipeline folder: used as it is (only its JSON files are read);
- ``zoo:NAME``: the built folder when it exists; a zoo model too big to build for a plan
  (``flux-dev-random``, 34 GB) gets its configuration files written from its spec instead;
- a Hub id: ``model_index.json`` and each component's ``config.json`` are downloaded, no weights.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from diffquant.atomic import atomic_dir
from diffquant.errors import DiffquantError
from diffquant.zoo import ZOO_PREFIX

# Zoo entries whose configuration files are written from a spec, without building any weights.
CONFIG_ONLY_ZOO = {"flux-dev-random": ("diffquant.zoo.flux", "dev_full_spec")}


def config_folder(model: str) -> Path:
    """A folder with ``model_index.json`` and one ``<component>/config.json`` per model component."""
    if model.startswith(ZOO_PREFIX):
        return _zoo_configs(model[len(ZOO_PREFIX):])
    from diffquant.components import local_pipeline_folder

    path = local_pipeline_folder(model)
    if path is not None:
        return path
    if model.count("/") == 1 and not model.startswith((".", "/", "~")):
        return _hub_configs(model)
    raise DiffquantError(f"Cannot find model {model!r}.",
                         hint="give a Hub id (org/name), a local pipeline folder, or zoo:NAME "
                              "(`diffquant recipes --zoo` lists the zoo)")


def _zoo_configs(name: str) -> Path:
    from diffquant.zoo import cache_root, ensure_model, get_entry

    entry = get_entry(name)  # unknown names raise with the valid choices
    built = cache_root() / f"{entry.name}-v{entry.version}"
    if entry.shipped or (built / "model_index.json").is_file() or name not in CONFIG_ONLY_ZOO:
        return ensure_model(name)
    folder = cache_root().parent / "plan-configs" / f"{entry.name}-v{entry.version}"
    if not (folder / "model_index.json").is_file():
        _write_flux_configs(folder, *CONFIG_ONLY_ZOO[name])
    return folder


def _write_flux_configs(folder: Path, module: str, spec_fn: str) -> None:
    """model_index.json and each model's config.json of a zoo FLUX spec (meta device, no weights)."""
    import importlib

    flux = importlib.import_module(module)
    spec = getattr(flux, spec_fn)()
    models = flux.meta_components(spec, (spec.clip["vocab_size"], spec.t5["vocab_size"]))
    with atomic_dir(folder, done="model_index.json") as tmp:
        index: dict[str, object] = {"_class_name": "FluxPipeline"}
        for name, model in models.items():
            (tmp / name).mkdir()
            if hasattr(model, "save_config"):
                model.save_config(tmp / name)
                index[name] = ["diffusers", type(model).__name__]
            else:
                model.config.save_pretrained(tmp / name)
                index[name] = ["transformers", type(model).__name__]
        index["scheduler"] = ["diffusers", "FlowMatchEulerDiscreteScheduler"]
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2))


def _hub_configs(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=["model_index.json", "*/config.json"]))
    except Exception as exc:  # noqa: BLE001 - every Hub failure means the same to the user
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        raise DiffquantError(
            f"Could not get the configuration of {repo_id!r} from the Hugging Face Hub "
            f"({type(exc).__name__}).",
            hint=("HF_HUB_OFFLINE=1 is set or the Hub is unreachable" if offline else
                  "check the id, the network, and `hf auth login` for gated models")
                 + "; or pass a local pipeline folder / zoo:NAME") from None
