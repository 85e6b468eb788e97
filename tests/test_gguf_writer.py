"""GGUF export: tensor policy, key layouts, the streaming writer, and loading through diffusers."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")

from diffquant.errors import DiffquantError
from diffquant.gguf_writer import SUPPORTED_TYPES, ExportResult, dequantize_array, export_gguf
from diffquant.gguf_writer.layout import plan_layout
from diffquant.gguf_writer.policy import TypePolicy, parse_keep
from diffquant.gguf_writer.quantize import quantize_tensor

# Width 256 (4 heads x 64) so that every block weight holds whole 256-value K-quant blocks.
TINY_FLUX = {"patch_size": 1, "in_channels": 64, "num_layers": 1, "num_single_layers": 1,
             "attention_head_dim": 64, "num_attention_heads": 4, "joint_attention_dim": 256,
             "pooled_projection_dim": 256, "guidance_embeds": True, "axes_dims_rope": (8, 28, 28)}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """On a shared 2-core machine torch's thread hand-offs dominate these tiny models
    (measured 10x slower with 2 threads under load); one thread keeps the module fast."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_flux(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny FLUX transformer saved as a pipeline-style folder (model_index.json + transformer/)."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    model = FluxTransformer2DModel(**TINY_FLUX).to(torch.bfloat16)
    root = tmp_path_factory.mktemp("tiny-flux")
    model.save_pretrained(root / "transformer")
    (root / "model_index.json").write_text(
        '{"_class_name": "FluxPipeline", "transformer": ["diffusers", "FluxTransformer2DModel"]}')
    return root


def flux_inputs(joint_dim: int = 256, pooled_dim: int = 256) -> dict:
    g = torch.Generator().manual_seed(1)
    img_ids = torch.zeros(64, 3)
    img_ids[:, 1] = torch.arange(64) // 8
    img_ids[:, 2] = torch.arange(64) % 8
    return {"hidden_states": torch.randn(1, 64, 64, generator=g).to(torch.bfloat16),
            "encoder_hidden_states": torch.randn(1, 8, joint_dim, generator=g).to(torch.bfloat16),
            "pooled_projections": torch.randn(1, pooled_dim, generator=g).to(torch.bfloat16),
            "timestep": torch.tensor([0.5]), "img_ids": img_ids, "txt_ids": torch.zeros(8, 3),
            "guidance": torch.tensor([3.5])}


def run_flux(model: torch.nn.Module, **kwargs: int) -> torch.Tensor:
    with torch.no_grad():
        return model(**flux_inputs(**kwargs)).sample.float()


def load_gguf(path: Path, config: Path) -> torch.nn.Module:
    from diffusers import FluxTransformer2DModel, GGUFQuantizationConfig

    return FluxTransformer2DModel.from_single_file(
        str(path), quantization_config=GGUFQuantizationConfig(compute_dtype=torch.bfloat16),
        config=str(config), torch_dtype=torch.bfloat16)


# --------------------------------------------------------------------------- policy


def test_parse_keep() -> None:
    rules = parse_keep(" norm , *.mod*=q8_0,,")
    assert [(r.pattern, r.qtype) for r in rules] == [("norm", None), ("*.mod*", "Q8_0")]
    for bad in ("=Q8_0", "norm=", "norm=Q9_9", "x[1"):
        with pytest.raises(DiffquantError):
            parse_keep(bad)


def test_unknown_type_suggests_close_matches() -> None:
    with pytest.raises(DiffquantError, match="Did you mean: 'Q4_K'"):
        TypePolicy("q4k")


def test_policy_rules() -> None:
    p = TypePolicy("Q2_K", "norm,*.mod*=Q8_0,ff.net.2=Q6_K,never_matches")
    assert p.choose("a.bias", (3072,), "BF16").qtype == "F32"
    assert p.choose("tiny.weight", (16, 64), "BF16") == p.choose("tiny.weight", (16, 64), "BF16")
    assert p.choose("tiny.weight", (16, 64), "BF16").qtype == "F32"  # <= 1024 values
    assert p.choose("conv.weight", (64, 16, 2, 2), "F16").qtype == "F16"  # n-D keeps a float type
    assert p.choose("blocks.0.attn.to_q.weight", (512, 512), "BF16").qtype == "Q2_K"
    assert p.choose("blocks.0.norm1.linear.weight", (512, 512), "BF16").qtype == "BF16"  # word: substring
    assert p.choose("single_blocks.0.modulation.lin.weight", (512, 512), "F32").qtype == "Q8_0"
    assert p.choose("blocks.0.ff.net.2.weight", (512, 512), "BF16").qtype == "Q6_K"
    assert p.choose("x_embedder.weight", (512, 64), "F32").qtype == "F32"  # default keep, f32 source
    assert p.choose("proj_out.weight", (512, 512), "BF16").qtype == "BF16"  # default keep (top level)
    assert p.choose("single_transformer_blocks.0.proj_out.weight", (512, 512), "BF16").qtype == "Q2_K"
    # Rows that are not whole K-blocks fall back like llama-quantize, then to the keep type.
    fb = p.choose("blocks.0.attn.to_k.weight", (512, 96), "BF16")
    assert fb.qtype == "Q4_0" and "not a multiple of 256" in fb.reason
    assert p.choose("blocks.0.attn.to_k.weight", (512, 100), "BF16").qtype == "BF16"
    assert p.unused_patterns() == ["never_matches"]
    assert TypePolicy("Q4_K", default_keep=False).choose("proj_out.weight", (512, 512), "BF16").qtype == "Q4_K"


def test_first_matching_pattern_wins() -> None:
    p = TypePolicy("Q4_K", "attn=Q8_0,to_q=Q2_K")
    assert p.choose("blocks.0.attn.to_q.weight", (512, 512), "BF16").qtype == "Q8_0"


def test_source_names_match_too() -> None:
    p = TypePolicy("Q4_K", "to_q=Q8_0")
    choice = p.choose("double_blocks.0.img_attn.qkv.weight", (1536, 512), "BF16", ["blocks.0.attn.to_q.weight"])
    assert choice.qtype == "Q8_0"


# --------------------------------------------------------------------------- layouts


def fake_flux_state(num_layers: int = 2, num_single_layers: int = 2) -> dict[str, torch.Tensor]:
    """FLUX.1's real tensor names and row counts (width 3072), with 2 columns and unique values,
    built on the meta device so nothing big is allocated."""
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        model = FluxTransformer2DModel(num_layers=num_layers, num_single_layers=num_single_layers,
                                       guidance_embeds=True)
    out = {}
    for i, (name, p) in enumerate(model.state_dict().items()):
        shape = (p.shape[0], 2) if p.ndim > 1 else (p.shape[0],)
        out[name] = torch.arange(int(np.prod(shape)), dtype=torch.float32).reshape(shape) + i * 1e6
    return out


def test_bfl_layout_inverts_diffusers_converter() -> None:
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    state = fake_flux_state()
    plan, warnings = plan_layout("bfl", "FluxTransformer2DModel", {k: tuple(v.shape) for k, v in state.items()})
    assert warnings == []
    bfl = {t.name: torch.cat([state[p.source][p.start:p.stop] for p in t.parts]) for t in plan}
    for t in plan:
        assert tuple(bfl[t.name].shape) == t.shape
    assert "double_blocks.1.img_attn.qkv.weight" in bfl and "single_blocks.1.linear1.bias" in bfl
    assert "final_layer.adaLN_modulation.1.weight" in bfl and "guidance_in.in_layer.weight" in bfl
    back = convert_flux_transformer_checkpoint_to_diffusers(dict(bfl))
    assert set(back) == set(state)
    for name, value in state.items():
        torch.testing.assert_close(back[name], value, rtol=0, atol=0)


def test_bfl_layout_errors_and_warnings() -> None:
    shapes = {"x_embedder.weight": (256, 64), "x_embedder.bias": (256,)}
    with pytest.raises(DiffquantError, match="only for FLUX"):
        plan_layout("bfl", "SD3Transformer2DModel", shapes)
    with pytest.raises(DiffquantError, match="no place in the BFL layout"):
        plan_layout("bfl", "FluxTransformer2DModel", {**shapes, "extra.weight": (4, 4)})
    _, warnings = plan_layout("bfl", "FluxTransformer2DModel", shapes)
    assert warnings and "width 256" in warnings[0]
    with pytest.raises(DiffquantError, match="Did you mean"):
        plan_layout("bfll", "FluxTransformer2DModel", shapes)


# --------------------------------------------------------------------------- writer


def test_export_writes_valid_gguf(tiny_flux: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    out = tmp_path / "sub" / "tiny-Q4_K.gguf"
    result = export_gguf(tiny_flux, out, "q4_k", keep="norm1.linear=Q8_0")
    assert isinstance(result, ExportResult)
    assert result.out_path == out and result.qtype == "Q4_K" and result.layout == "diffusers"
    assert result.bytes_written == out.stat().st_size and result.seconds > 0
    assert list(tmp_path.glob("sub/.*")) == []  # no temporary file left behind
    types = result.tensor_types
    assert types["transformer_blocks.0.attn.to_q.weight"] == "Q4_K"
    assert types["transformer_blocks.0.attn.to_q.bias"] == "F32"
    assert types["transformer_blocks.0.norm1.linear.weight"] == "Q8_0"
    assert types["x_embedder.weight"] == "BF16"  # default keep, bf16 source
    assert set(types.values()) <= set(SUPPORTED_TYPES)

    reader = gguf.GGUFReader(out)
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert fields["general.architecture"] == "flux"
    assert fields["general.quantization_version"] == gguf.GGML_QUANT_VERSION
    assert fields["diffquant.source_model"] == str(tiny_flux)
    assert fields["diffquant.version"] and fields["diffquant.layout"] == "diffusers"
    source = load_file(tiny_flux / "transformer" / "diffusion_pytorch_model.safetensors")
    assert {t.name for t in reader.tensors} == set(source)
    for t in reader.tensors:
        qtype = t.tensor_type.name
        assert qtype == types[t.name]
        expected = quantize_tensor(source[t.name], qtype)
        assert np.array_equal(np.asarray(t.data).view(np.uint8).ravel(), expected.view(np.uint8).ravel()), t.name
        values = dequantize_array(np.asarray(t.data), qtype).reshape(tuple(source[t.name].shape))
        rel = np.linalg.norm(values - source[t.name].float().numpy()) / np.linalg.norm(source[t.name].float().numpy())
        assert rel < 0.1, (t.name, qtype, rel)


def test_export_failure_leaves_nothing(tiny_flux: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "broken"
    folder.mkdir()
    state = load_file(tiny_flux / "transformer" / "diffusion_pytorch_model.safetensors")
    state["transformer_blocks.0.attn.to_q.weight"][0, 0] = float("nan")
    save_file(state, folder / "diffusion_pytorch_model.safetensors")
    (folder / "config.json").write_text((tiny_flux / "transformer" / "config.json").read_text())
    out = tmp_path / "out.gguf"
    with pytest.raises(DiffquantError, match="to_q.weight.*NaN"):
        export_gguf(folder, out, "Q4_K")  # a single model folder works as well as a pipeline
    assert list(tmp_path.glob("*.gguf")) == [] and list(tmp_path.glob(".*tmp")) == []


def test_export_user_errors(tiny_flux: Path, tmp_path: Path) -> None:
    with pytest.raises(DiffquantError, match="pipeline component"):
        export_gguf(tiny_flux, tmp_path / "x.gguf", "Q4_K", component="unet")
    with pytest.raises(DiffquantError, match="GGUF quant type"):
        export_gguf(tiny_flux, tmp_path / "x.gguf", "Q7_K")
    with pytest.raises(DiffquantError, match="does not exist"):
        export_gguf(tmp_path / "nope", tmp_path / "x.gguf", "Q4_K")


def test_export_reads_sharded_weights(tiny_flux: Path, tmp_path: Path) -> None:
    from diffusers import FluxTransformer2DModel

    model = FluxTransformer2DModel.from_pretrained(tiny_flux / "transformer", torch_dtype=torch.bfloat16)
    model.save_pretrained(tmp_path / "sharded", max_shard_size="2MB")
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 1
    seen: list[str] = []
    sharded = export_gguf(tmp_path / "sharded", tmp_path / "sharded.gguf", "Q8_0",
                          progress=lambda i, n, name, t: seen.append(name))
    single = export_gguf(tiny_flux, tmp_path / "single.gguf", "Q8_0")
    assert list(sharded.tensor_types.items()) == list(single.tensor_types.items())
    assert seen == list(single.tensor_types)
    a, b = gguf.GGUFReader(tmp_path / "sharded.gguf"), gguf.GGUFReader(tmp_path / "single.gguf")
    for ta, tb in zip(a.tensors, b.tensors):
        assert ta.name == tb.name and np.array_equal(np.asarray(ta.data), np.asarray(tb.data))


def test_export_streams_without_float32_copies(tmp_path: Path) -> None:
    """numpy's peak allocation stays well below one float32 copy of the largest tensor."""
    from safetensors.torch import save_file

    folder = tmp_path / "big"
    folder.mkdir()
    big = torch.randn(2048, 2048).to(torch.bfloat16)  # 16 MiB as float32
    save_file({"a.weight": big, "b.weight": big[:1024].clone()}, folder / "model.safetensors")
    (folder / "config.json").write_text('{"_class_name": "Whatever"}')
    tracemalloc.start()
    try:
        export_gguf(folder, tmp_path / "big.gguf", "Q4_K")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 0.5 * big.numel() * 4, peak


# --------------------------------------------------------------------------- loading


def test_q2k_and_q4k_load_in_diffusers_and_track_bf16(tiny_flux: Path, tmp_path: Path) -> None:
    from diffusers import FluxTransformer2DModel

    reference = run_flux(FluxTransformer2DModel.from_pretrained(tiny_flux / "transformer", torch_dtype=torch.bfloat16))
    errors = {}
    for qtype in ("Q4_K", "Q2_K"):
        result = export_gguf(tiny_flux, tmp_path / f"{qtype}.gguf", qtype)
        model = load_gguf(result.out_path, tiny_flux / "transformer")
        weight = model.transformer_blocks[0].attn.to_q.weight
        assert getattr(weight, "quant_type", None) == gguf.GGMLQuantizationType[qtype]
        out = run_flux(model)
        assert torch.isfinite(out).all()
        errors[qtype] = float((out - reference).norm() / reference.norm())
    assert errors["Q4_K"] < errors["Q2_K"] < 0.2, errors
    assert errors["Q4_K"] < 0.05, errors


def test_zoo_pipeline_generates_close_to_bf16(tmp_path: Path) -> None:
    """zoo:tiny-flux (width 256): the GGUF transformer inside the FluxPipeline draws a finite image
    that is close to bf16's, closer at Q4_K than at Q2_K."""
    from diffusers import FluxPipeline, FluxTransformer2DModel, GGUFQuantizationConfig

    from diffquant.zoo import ensure_model

    folder = ensure_model("tiny-flux")
    pipe = FluxPipeline.from_pretrained(folder, torch_dtype=torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)

    def draw() -> np.ndarray:
        image = pipe("a red circle", height=64, width=64, num_inference_steps=3, output_type="np",
                     generator=torch.Generator().manual_seed(0)).images[0]
        return np.asarray(image, dtype=np.float64)

    reference = draw()
    psnr = {}
    for qtype in ("Q4_K", "Q2_K"):
        result = export_gguf(folder, tmp_path / f"{qtype}.gguf", qtype)
        transformer = FluxTransformer2DModel.from_single_file(
            str(result.out_path), quantization_config=GGUFQuantizationConfig(compute_dtype=torch.bfloat16),
            config=str(folder), subfolder="transformer", torch_dtype=torch.bfloat16)
        pipe.transformer = transformer
        image = draw()
        assert np.isfinite(image).all()
        psnr[qtype] = 10 * np.log10(1.0 / max(np.mean((image - reference) ** 2), 1e-12))
    assert psnr["Q4_K"] > psnr["Q2_K"] > 30, psnr


def test_cli_export(tiny_flux: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from diffquant.cli import main

    out = tmp_path / "cli.gguf"
    assert main(["export", "gguf", str(tiny_flux), "--type", "q2_k", "--keep", "norm,*.mod*=Q8_0", "-o", str(out)]) == 0
    text = capsys.readouterr()
    assert out.is_file()
    assert "transformer_blocks.0.attn.to_q.weight" in text.out and "Q2_K" in text.out
    assert "--keep norm" in text.out and "wrote" in text.out
    assert "'*.mod*=Q8_0' matched no tensor" in text.err
    assert main(["export", "gguf", str(tiny_flux), "--type", "Q4_X", "-o", str(out)]) == 2
    assert "Did you mean" in capsys.readouterr().err
    assert main(["export", "gguf", "no/such-model-here", "--type", "Q4_K", "-o", str(out)]) == 2
    assert "Hugging Face Hub" in capsys.readouterr().err


@pytest.mark.slow
def test_bfl_layout_loads_at_flux_width(tmp_path: Path) -> None:
    """BFL keys load through diffusers' converter, which needs FLUX's real width (3072): a
    1 double + 1 single block transformer at that width (~480M params, ~1 GB in bf16)."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    config = {**TINY_FLUX, "attention_head_dim": 128, "num_attention_heads": 24, "axes_dims_rope": (16, 56, 56)}
    with torch.device("meta"):
        model = FluxTransformer2DModel(**config)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    model.save_pretrained(tmp_path / "wide")
    reference = run_flux(model)
    del model
    result = export_gguf(tmp_path / "wide", tmp_path / "wide-bfl.gguf", "Q8_0", layout="bfl")
    assert "double_blocks.0.img_attn.qkv.weight" in result.tensor_types
    assert "single_blocks.0.linear1.weight" in result.tensor_types
    loaded = load_gguf(result.out_path, tmp_path / "wide")
    out = run_flux(loaded)
    assert torch.isfinite(out).all()
    assert float((out - reference).norm() / reference.norm()) < 0.05
