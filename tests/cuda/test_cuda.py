"""The GPU path (issue 17 item 5): marked `cuda`, skipped where CUDA is not available; `scripts/device_run.sh` runs
them on the GPU machine (`pytest -m cuda tests/cuda`).

* The embedded toy pipeline end to end in float16 and bfloat16 with the default settings (toy geometry), on a
  held-out scene whose crop needs a grid stage, with `grid.fusion` alpha and latent.
* An SD-v1-sized edit with random weights at 1024 px through `msbd.cli_edit.edit` (a 896 px crop: a 768 px stage,
  then a 2 x 2 grid of 768 px tiles), in float16 and bfloat16, with reduced steps.
* `scripts/run.py` as the README shows it (`device=cuda dtype=float16`), on `model=random` (ESRGAN path, reranker).
* The SD-v1 UNet and VAE in float16 / bfloat16 against float32 (TF32 off): relative L2 error within bounds set
  from the same comparison on the CPU (SD-v1 UNet at 16x16 latents, VAE at 64 px, random weights: fp16 1.4e-3 to
  3.5e-3, bf16 1.1e-2 to 2.8e-2), with room for GPU kernels and larger sizes.
Every edit: every stage output finite, every pixel outside the mask byte-identical to the input, the mask repainted.
The toy edits run the defaults, the others reduced steps: about two minutes on one H100 (an estimate: not yet run on
a GPU). Without one, the toy edits ran on the CPU under `msbd.devcheck.EmulatedCUDA` in bf16 with reduced steps
(0 device mismatches, these checks passed), and the CLI test on the CPU with device=cpu.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
REL_BOUND = {"fp16": 2e-2, "bf16": 8e-2}     # relative L2 error against float32 (see the module docstring)


def rel_l2(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float32."""
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


def check_edit(result, image: np.ndarray, mask: np.ndarray) -> None:
    """Finite stage outputs, byte-identical pixels outside the mask (>= 0.5 = edit), a repainted mask."""
    for stage in result.stages:
        assert torch.isfinite(stage.image).all(), f"{stage.name}: non-finite pixels"
        if stage.decoder_loss is not None:
            assert all(np.isfinite(stage.decoder_loss)), (stage.name, stage.decoder_loss)
    inside = np.asarray(mask) >= 0.5
    assert result.image.shape == image.shape and result.image.dtype == np.uint8
    assert np.array_equal(result.image[~inside], image[~inside])
    assert not np.array_equal(result.image[inside], image[inside])


@pytest.fixture
def fp32_reference():
    """Plain float32 arithmetic for the reference (TF32 off for matmuls and cuDNN convolutions), restored after."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture(scope="module")
def sd_bundle():
    """SD-v1-sized networks with random weights (seed 0), float32 on the GPU."""
    from msbd.models import build_bundle
    return build_bundle("sd-v1", None, dtype=torch.float32, device="cuda")


def cast_bundle(bundle, dtype: torch.dtype):
    """A copy of the bundle with its three networks in `dtype` (the same weights)."""
    return dataclasses.replace(bundle, dtype=dtype, **{
        name: copy.deepcopy(getattr(bundle, name)).to(dtype) for name in ("unet", "vae", "text_encoder")})


# 1. Networks in half precision against float32 -----------------------------------------------------------------


@pytest.mark.parametrize("name", DTYPES)
def test_sd_unet_half_precision_close_to_fp32(sd_bundle, fp32_reference, name):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 64, 64, generator=gen).cuda()                # the CFG pair at 512 px
    t = torch.tensor([981, 500], device="cuda")
    context = torch.randn(2, 77, 768, generator=gen).cuda()
    with torch.no_grad():
        ref = sd_bundle.unet(x, t, context)
        out = copy.deepcopy(sd_bundle.unet).to(DTYPES[name])(x.to(DTYPES[name]), t, context.to(DTYPES[name]))
    assert out.dtype == DTYPES[name] and torch.isfinite(out).all()
    assert rel_l2(out, ref) < REL_BOUND[name], rel_l2(out, ref)


@pytest.mark.parametrize("name", DTYPES)
def test_sd_vae_half_precision_close_to_fp32(sd_bundle, fp32_reference, name):
    gen = torch.Generator().manual_seed(2)
    image = (torch.rand(1, 3, 512, 512, generator=gen) * 2 - 1).cuda()
    vae = copy.deepcopy(sd_bundle.vae).to(DTYPES[name])
    with torch.no_grad():
        z_ref = sd_bundle.vae.encode(image)
        image_ref = sd_bundle.vae.decode(z_ref)
        z = vae.encode(image.to(DTYPES[name]))
        decoded = vae.decode(z_ref.to(DTYPES[name]))                      # the decoder alone, on the same latent
    assert torch.isfinite(z).all() and torch.isfinite(decoded).all()
    assert rel_l2(z, z_ref) < REL_BOUND[name], rel_l2(z, z_ref)
    assert rel_l2(decoded, image_ref) < REL_BOUND[name], rel_l2(decoded, image_ref)


# 2. Whole edits -------------------------------------------------------------------------------------------------


_TOY_BUNDLES: dict = {}


def toy_bundle(name: str):
    """The embedded toy models on the GPU in DTYPES[name] (ESRGAN-layout SR and the toy CLIP reranker), cached."""
    from experiments.common import ModelSpec, load_bundle
    from msbd.config import MSBDConfig
    if name not in _TOY_BUNDLES:
        spec = ModelSpec(name="toy", ldm_config="toy", ckpt="msbd/toy/weights/toy-ldm.safetensors",
                         upscaler="msbd/toy/weights/toy-sr-x4.safetensors",
                         reranker="msbd/toy/weights/toy-clip.safetensors", reranker_arch="msbd-toy-clip")
        _TOY_BUNDLES[name] = load_bundle(spec, MSBDConfig.for_native_size(128), DTYPES[name], "cuda")
    return _TOY_BUNDLES[name]


@pytest.mark.parametrize("fusion", ["alpha", "latent"])
@pytest.mark.parametrize("name", DTYPES)
def test_toy_pipeline_defaults_with_grid(name, fusion):
    from experiments.common import toy_case
    from msbd.config import MSBDConfig, replace
    from msbd.pipeline import run_msbd
    case = toy_case(3, 512)                      # 384 px crop: a 192 px stage, then a grid of 192 px tiles
    config = replace(MSBDConfig.for_native_size(128), grid={"fusion": fusion})
    result = run_msbd(case.image, case.mask.astype(np.float32), case.task.prompt, config, toy_bundle(name))
    assert [s.name for s in result.stages] == ["first", "stage1", "stage2 (grid)"]
    assert result.scores is not None and len(result.candidates) == config.first_stage.batch   # reranked
    check_edit(result, case.image, case.mask)


def sd_scene(side: int = 1024, mask_box=(150, 170, 850, 870)) -> tuple[np.ndarray, np.ndarray]:
    """A smooth colour image with noise, [side, side, 3] uint8, and a rectangular mask (rows, cols half-open)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:side, 0:side] / side
    base = np.stack([yy, xx, 1 - (yy + xx) / 2], axis=-1) * 200 + 30
    image = np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
    mask = np.zeros((side, side), np.float32)
    top, left, bottom, right = mask_box
    mask[top:bottom, left:right] = 1
    return image, mask


@pytest.mark.parametrize("name", DTYPES)
def test_sd_sized_edit_1024px(sd_bundle, tmp_path, name):
    from msbd.cli_edit import edit
    from msbd.config import MSBDConfig, replace
    image, mask = sd_scene()
    Image.fromarray(image).save(tmp_path / "in.png")
    Image.fromarray((mask * 255).astype(np.uint8), "L").save(tmp_path / "mask.png")
    config = replace(MSBDConfig(), upscale={"mode": "bicubic", "steps": 20},
                     first_stage={"batch": 2, "steps": 10, "repaint_steps": 1}, decoder_opt={"iterations": 2})
    result = edit(tmp_path / "in.png", tmp_path / "mask.png", "a corgi sitting on a bench", tmp_path / "out.png",
                  config, cast_bundle(sd_bundle, DTYPES[name]), progress=False)
    assert [s.name for s in result.stages] == ["first", "stage1", "stage2 (grid)"]
    assert result.stages[-1].tiles_run == 4                           # 896 px crop, tiles of 768 overlapping 128
    check_edit(result, image, mask)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out.png").convert("RGB")), result.image)


def test_cli_edit_on_cuda_float16(tmp_path):
    """The README's command line with device=cuda dtype=float16, on the random-weight tiny models (ESRGAN stand-in,
    reranker, a grid stage), with reduced steps."""
    image, mask = sd_scene(160, (30, 40, 130, 120))
    Image.fromarray(image).save(tmp_path / "in.png")
    Image.fromarray((mask * 255).astype(np.uint8), "L").save(tmp_path / "mask.png")
    out = tmp_path / "out.png"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "run.py"), "+experiment=edit",
                           "model=random", "device=cuda", "dtype=float16", f"image={tmp_path / 'in.png'}",
                           f"mask={tmp_path / 'mask.png'}", "prompt=a red cube", f"output={out}",
                           f"hydra.run.dir={tmp_path / 'run'}", "msbd.first_stage.steps=10", "msbd.upscale.steps=20",
                           "msbd.decoder_opt.iterations=5"], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = np.asarray(Image.open(out).convert("RGB"))
    inside = mask >= 0.5
    assert written.shape == image.shape
    assert np.array_equal(written[~inside], image[~inside]) and not np.array_equal(written[inside], image[inside])
