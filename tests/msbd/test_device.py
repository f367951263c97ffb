"""Device discipline without a GPU (issue: the GPU path): the emulated CUDA device of msbd.devcheck catches what
real CUDA rejects, the sampler does not sync or copy per step, and the whole edit CLI runs under it."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from ldm.sampling import SamplerConfig, sample
from msbd.devcheck import DeviceMismatch, EmulatedCUDA, is_tagged

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_emulation_tags_moves_and_catches_mixing():
    net = torch.nn.Conv2d(3, 4, 3, padding=1)
    with EmulatedCUDA() as emu:
        assert torch.cuda.is_available()
        net.to("cuda")
        x = torch.rand(1, 3, 8, 8).to("cuda")
        y = net(x)
        assert y.device == torch.device("cuda", 0) and y.is_cuda and is_tagged(next(net.parameters()))
        assert torch.zeros(2, device=y.device).device.type == "cuda"
        y * torch.tensor(2.0)                                # 0-dim CPU tensors mix, as on CUDA
        with pytest.raises(DeviceMismatch, match="mixed"):
            y + torch.ones(1, 4, 8, 8)
        with pytest.raises(DeviceMismatch, match="numpy"):
            y.numpy()
        with pytest.raises(DeviceMismatch, match="generator"):
            torch.randn(3, generator=torch.Generator(), device="cuda")
        assert not is_tagged(y.cpu()) and y.sum().item() == pytest.approx(float(y.cpu().sum()))
    assert emu.n_syncs == 3 and sum(emu.mismatches.values()) == 3     # item, cpu() and the cpu() inside float()


def test_emulation_runs_adam_on_tagged_parameters():
    net = torch.nn.Linear(4, 4)
    with EmulatedCUDA() as emu:
        net.to("cuda")
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        net(torch.rand(2, 4, device="cuda")).square().mean().backward()
        opt.step()
    assert not emu.mismatches


def _sampler_run(steps: int, device: str):
    gens = [torch.Generator().manual_seed(k) for k in range(2)]
    source = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(9)).to(device)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1
    model = lambda x, t, c: 0.1 * x  # noqa: E731
    cfg = SamplerConfig(num_steps=steps, eta=1.0, guidance_scale=1.0, progress=False)
    return sample(model, cfg, generators=gens, source=source, mask=mask.to(device))


def test_sampler_neither_syncs_nor_copies_per_step():
    """Fresh noise is drawn in prefetched blocks (one copy per 16 draws), the loop reads no tensor on the host."""
    with EmulatedCUDA() as emu:
        out = _sampler_run(40, "cuda")
    assert is_tagged(out) and not emu.mismatches
    assert emu.n_syncs <= 1, emu.report()                  # the mask range check, once per call
    assert emu.n_h2d <= 12, emu.report()                   # 41 step + 40 background draws: 6 blocks, + 1 init
    # and the prefetch does not change the numbers
    assert torch.equal(out, _sampler_run(40, "cpu"))


def _scene(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (96, 120, 3), dtype=np.uint8)).save(tmp_path / "image.png")
    mask = np.zeros((96, 120), np.uint8)
    mask[20:76, 24:100] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    return tmp_path / "image.png", tmp_path / "mask.png"


@pytest.mark.parametrize("fusion,dtype,extra", [("alpha", "float16", []), ("latent", "bfloat16", []),
                                                ("alpha", "float16", ["msbd.decoder_opt.train_levels=1"])],
                         ids=["alpha-fp16", "latent-bf16", "alpha-fp16-train_levels"])
def test_edit_cli_runs_on_the_emulated_gpu(tmp_path, fusion, dtype, extra):
    """The edit command on model=random with device=cuda under the emulation: decoder optimisation on, a grid
    stage, the x4 upscaler and the reranker in use. Any op mixing devices raises (strict), so exit 0 is the check;
    the output keeps every pixel outside the mask."""
    image, mask = _scene(tmp_path)
    out = tmp_path / "out.png"
    cmd = [sys.executable, "-m", "msbd.devcheck", "scripts/run.py", "+experiment=edit", "model=random",
           f"image={image}", f"mask={mask}", "prompt=a red square", f"output={out}", "device=cuda",
           f"dtype={dtype}", f"msbd.grid.fusion={fusion}", "msbd.decoder_opt.iterations=1", "msbd.first_stage.steps=2",
           "msbd.first_stage.batch=2", "msbd.first_stage.repaint_steps=1", "msbd.upscale.steps=4", "progress=false",
           f"hydra.run.dir={tmp_path / 'run'}", *extra]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "0 mismatches" in proc.stderr
    assert "(grid)" in proc.stdout and "decoder_opt" in proc.stdout and "rerank" in proc.stdout
    assert "sr " in proc.stdout
    before, after = np.asarray(Image.open(image)), np.asarray(Image.open(out))
    keep = np.asarray(Image.open(mask)) < 128
    assert np.array_equal(before[keep], after[keep])


def test_memory_check_reads_the_gpus_free_memory_not_the_hosts():
    """On CUDA the estimate is compared with torch.cuda.mem_get_info: a card with little free memory refuses the
    edit up front, though the host has plenty."""
    from msbd.config import MSBDConfig
    from msbd.errors import InputError
    from msbd.memory import available_memory, check_memory, estimate_memory, host_available
    from msbd.models import build_bundle
    config = MSBDConfig.for_native_size(32)
    with EmulatedCUDA(total_bytes=16 * 2**30, free_bytes=2**30):
        bundle = build_bundle("tiny-test", device="cuda")
        assert available_memory(bundle.device) == 2**30 < host_available()
        est = estimate_memory(config, bundle, (4096, 4096), 4096)
        assert 2**30 < est["peak"] < host_available()
        with pytest.raises(InputError, match="peak GPU memory .* exceeds the available 1.0 GiB on cuda"):
            check_memory(config, bundle, (4096, 4096), 4096)
    with EmulatedCUDA(free_bytes=64 * 2**30):
        assert check_memory(config, build_bundle("tiny-test", device="cuda"), (4096, 4096), 4096)["peak"] > 0
