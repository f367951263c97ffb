"""scripts/train_toy.py: bad options end in one `error:` line and exit code 2 before any training starts."""
import importlib.util
import os

import pytest
import torch
from safetensors.torch import load_file

from msbd.toy import presets

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def train_toy():
    spec = importlib.util.spec_from_file_location("train_toy", os.path.join(ROOT, "scripts", "train_toy.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("override, words", [
    ("stages=[vea]", "unknown stage"), ("force=[all]", "unknown stage"), ("ldm.lr=abc", "lr must be float"),
    ("ldm.snr_gamma=-1", "snr_gamma"), ("ldm.decay_start=9000 ldm.max_steps=6800", "decay_start"),
    ("ldm.max_steps=-5", "ldm.max_steps must be >= 0"), ("sr.clean_prob=2", "clean_prob"),
    ("clip.max_minutes=0", "clip.max_minutes"), ("sr.max_steps=0", "sr.max_steps"), ("vae.batch_size=1.5", "batch_size"),
    ("ldm.nope=1", "nope"), ("threads=0", "threads"), ("ldm.init=/no/such.safetensors", "weights file not found"),
    ("vae.init=/no/such.safetensors", "'vae.init'"), ("vae.max_minutes=0", "0 only with vae.init"),
    ("vae.equivariance_weight=-1", "equivariance_weight"), ("vae.latent_blur_weight=-1", "latent_blur_weight"),
    ("ldm.object_weight=-1", "object_weight"), ("ldm.offset_noise=-0.1", "offset_noise"),
    ("ldm.offset_noise=abc", "offset_noise must be float"),
    ("sr.edge_prob=-0.1", "edge_prob"),
    ("data.n_single=-1", "data.n_single"), ("data.n_train=600000", "must not overlap"),
    ("data.single_sizes=[0.6,0.3]", "single_sizes"), ("data.single_sizes=[0.3]", "single_sizes"),
    ("data.single_sizes=abc", "single_sizes"), ("data.n_single=abc", "data.n_single must be int"),
    ("data.n_single=1.5", "data.n_single must be int"),
    ("ldm.init=msbd/toy/weights/toy-sr-x4.safetensors", "ldm.init"),        # a file without UNet / text keys
    ("vae.init=msbd/toy/weights/toy-clip.safetensors", "vae.init"),
    ("ldm.freeze_text=maybe", "freeze_text"),
    ("ldm.freeze_text=false ldm.init=msbd/toy/weights/toy-ldm.safetensors", "ldm.init"),  # 48-wide text, 64 wanted
    ("arch.unet_channels=48", "norm_num_groups"), ("arch.unet_channels=48 arch.unet_norm_groups=16", "heads"),
    ("arch.unet_mult=abc", "arch.unet_mult"), ("arch.unet_mult=[]", "arch.unet_mult"),
    ("arch.unet_attention=[0]", "arch.unet_attention"), ("arch.latent_channels=0", "arch.latent_channels"),
    ("arch.latent_channels=2.5", "arch.latent_channels must be int"), ("dry_run=maybe", "dry_run"),
    ("snapshot=maybe", "snapshot"), ("stages=[decoder] decoder.max_minutes=0", "decoder.max_minutes"),
    ("decoder.crop=abc", "decoder.crop must be int"), ("decoder.lr=-1", "lr"),
    ("arch.latent_channels=8 ldm.init=msbd/toy/weights/toy-ldm.safetensors", "ldm.init"),   # 4-channel UNet
])
def test_bad_options_give_one_error_line(train_toy, capsys, override, words):
    with pytest.raises(SystemExit) as exit_info:
        train_toy.precheck(override.split())
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and words in err, err


def test_default_config_passes(train_toy, capsys):
    train_toy.precheck([])                         # no SystemExit
    train_toy.precheck(["stages=[clip]", "clip.max_minutes=22"])
    train_toy.precheck(["vae.init=msbd/toy/weights/toy-ldm.safetensors", "vae.max_minutes=0"])   # VAE as it is
    train_toy.precheck(["data.n_single=16000", "data.single_sizes=[0.3,0.6]"])
    train_toy.precheck(["ldm.max_minutes=0.5", "stages=[vae,ldm,decoder]", "decoder.max_minutes=2"])   # float or int
    assert capsys.readouterr().err == ""


def test_warm_start_loads_the_vae_or_the_unet_and_text_encoder(train_toy):
    from ldm.checkpoint.formats import read_state_dict
    from msbd.toy.train_ldm import LDMLitModule, LDMTrainConfig
    module = LDMLitModule(presets.TOY_UNET, presets.TOY_CLIP_TEXT, LDMTrainConfig())
    train_toy.warm_start(module, presets.LDM_WEIGHTS)
    shipped, _ = read_state_dict(presets.LDM_WEIGHTS)           # the text encoder comes from toy-clip (metadata link)
    for name, part in (("model.diffusion_model.out.2.weight", module.unet.out[2].weight),
                       ("model.diffusion_model.out.2.weight", module.ema_unet.out[2].weight),
                       ("cond_stage_model.transformer.text_model.final_layer_norm.weight",
                        module.ema_text.text_model.final_layer_norm.weight)):
        torch.testing.assert_close(part, shipped[name].float(), rtol=0, atol=0)
    from msbd.toy.train_ldm import VAELitModule, VAETrainConfig
    vae = VAELitModule(presets.TOY_VAE, VAETrainConfig())
    train_toy.warm_start(vae, presets.LDM_WEIGHTS)
    torch.testing.assert_close(vae.vae.decoder.conv_out.weight, shipped["first_stage_model.decoder.conv_out.weight"].float(),
                               rtol=0, atol=0)


def test_export_copy_writes_into_export_dir_not_over_the_shipped_file(train_toy, tmp_path):
    from omegaconf import OmegaConf
    trained = tmp_path / "sr.safetensors"
    trained.write_bytes(b"new weights")
    shipped_before = open(presets.SR_WEIGHTS, "rb").read()
    target = train_toy.export_copy(OmegaConf.create({"export_dir": str(tmp_path / "export")}), str(trained),
                                   presets.SR_WEIGHTS)
    assert target == str(tmp_path / "export" / "toy-sr-x4.safetensors") and open(target, "rb").read() == b"new weights"
    assert open(presets.SR_WEIGHTS, "rb").read() == shipped_before


@pytest.mark.parametrize("freeze", [True, False])
def test_ldm_stage_trains_on_the_frozen_clip_text_tower_or_a_joint_encoder(train_toy, tmp_path, freeze):
    """ldm.freeze_text=true (the default): the UNet gets a 48-wide context, the exported text encoder is exactly the
    toy CLIP's text tower (clip_text_state of the shipped toy-clip file); false: a 64-wide encoder that trains with
    the UNet (so it leaves the CLIP tower's sizes and moves). The card says which."""
    from hydra import compose, initialize_config_dir
    from safetensors.torch import load_file

    from msbd.toy.clip_model import clip_text_state
    from msbd.toy.data import render_cache, seed_range
    with initialize_config_dir(config_dir=os.path.join(ROOT, "configs"), version_base="1.3"):
        cfg = compose("train_toy", overrides=[f"run_dir={tmp_path}", f"export_dir={tmp_path / 'export'}",
                                              f"ldm.freeze_text={str(freeze).lower()}", "ldm.batch_size=4",
                                              "ldm.max_steps=2", "ldm.decay_start=0", "ldm.warmup_steps=1",
                                              "ldm.lr=1e-2"])
    train_toy.validate(cfg)
    text = presets.TOY_CLIP_TEXT if freeze else presets.TOY_JOINT_TEXT
    assert train_toy.text_config(cfg) == text
    cache = render_cache(str(tmp_path / "cache"), seed_range("train", 8), 128)
    card: dict = {}
    out = train_toy.train_ldm(cfg, [cache], torch.randn(8, 4, 16, 16), 1.0, card)
    state = load_file(out)
    prefix = "cond_stage_model.transformer."
    key = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    assert state[key].shape[1] == text.hidden_size
    norm = state[prefix + "text_model.final_layer_norm.weight"]
    if freeze:
        expected = clip_text_state(load_file(presets.CLIP_WEIGHTS))
        assert {k[len(prefix):] for k in state if k.startswith(prefix)} == set(expected)
        for k, v in expected.items():
            torch.testing.assert_close(state[prefix + k], v, rtol=0, atol=0)
        assert card["ldm"]["text_encoder"].endswith("toy-clip.safetensors, frozen")
    else:
        assert norm.shape == (64,) and not torch.equal(norm, torch.ones(64))   # trained away from its init
        assert card["ldm"]["text_encoder"] == "trained jointly"

    # export: a frozen CLIP tower is not stored a second time; the file names the CLIP copied beside it
    from safetensors import safe_open
    from safetensors.torch import save_file

    from ldm.checkpoint.formats import read_state_dict
    from ldm.models.autoencoder import AutoencoderKL
    vae_path = tmp_path / "vae.safetensors"
    save_file({k: v.contiguous() for k, v in AutoencoderKL(presets.TOY_VAE).state_dict().items()}, str(vae_path))
    train_toy.export(cfg, str(vae_path), load_file(out), 1.0)
    exported = tmp_path / "export" / os.path.basename(presets.LDM_WEIGHTS)
    with safe_open(str(exported), "pt") as f:
        stored, metadata = set(f.keys()), f.metadata() or {}
    assert any(k.startswith(prefix) for k in stored) is not freeze
    assert metadata.get("msbd_text_from") == ("toy-clip.safetensors" if freeze else None)
    if freeze:                                              # the hash of the CLIP file copied beside it
        from ldm.checkpoint.formats import sha256_file
        assert metadata["msbd_text_from_sha256"] == sha256_file(tmp_path / "export" / "toy-clip.safetensors")
    assert (tmp_path / "export" / "toy-clip.safetensors").is_file() is freeze
    loaded, _ = read_state_dict(exported)
    for k in (k for k in state if k.startswith(prefix)):
        torch.testing.assert_close(loaded[k], state[k].half(), rtol=0, atol=0)


def test_export_keeps_a_text_encoder_that_is_not_the_clip_tower(train_toy, tmp_path):
    """A frozen-text run whose text weights differ from the toy CLIP's (another CLIP, an edited file) stores them."""
    from omegaconf import OmegaConf
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from msbd.toy.clip_model import clip_text_state
    tower = clip_text_state(load_file(presets.CLIP_WEIGHTS))
    tower["text_model.final_layer_norm.bias"] = tower["text_model.final_layer_norm.bias"] + 1.0
    ldm = tmp_path / "ldm.safetensors"
    save_file({f"cond_stage_model.transformer.{k}": v for k, v in tower.items()}, str(ldm))
    vae = tmp_path / "vae.safetensors"
    save_file({"encoder.conv_in.bias": torch.zeros(3)}, str(vae))
    cfg = OmegaConf.merge(OmegaConf.load(os.path.join(ROOT, "configs", "train_toy.yaml")),
                          {"export_dir": str(tmp_path / "export"), "ldm": {"freeze_text": True}})
    train_toy.export(cfg, str(vae), load_file(str(ldm)), 1.0)
    with safe_open(str(tmp_path / "export" / "toy-ldm.safetensors"), "pt") as f:
        assert "cond_stage_model.transformer.text_model.final_layer_norm.bias" in f.keys()
        assert "msbd_text_from" not in (f.metadata() or {})


def test_freeze_text_without_any_toy_clip_is_one_error_line(train_toy, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(presets, "CLIP_WEIGHTS", str(tmp_path / "none" / "toy-clip.safetensors"))
    with pytest.raises(SystemExit) as exit_info:
        train_toy.precheck(["ldm.freeze_text=true", "stages=[ldm]", f"export_dir={tmp_path / 'export'}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and "add the clip stage" in err, err
    train_toy.precheck(["ldm.freeze_text=true", "stages=[clip,ldm]", f"export_dir={tmp_path / 'export'}"])  # trained here
    assert not (tmp_path / "export").exists()


def test_arch_options_train_and_export_a_loadable_model_of_other_sizes(train_toy, tmp_path):
    """arch.*: an 8-channel latent, a 16-wide UNet: the ldm stage trains it, the export's toy-ldm.json describes it and
    the exported file loads strictly through ldm.checkpoint with that config."""
    import json

    from hydra import compose, initialize_config_dir
    from safetensors.torch import save_file

    from ldm.checkpoint import load_models
    from ldm.config import LDMConfig
    from ldm.models.autoencoder import AutoencoderKL
    from msbd.toy.data import render_cache, seed_range
    arch = ["arch.latent_channels=8", "arch.unet_channels=16", "arch.unet_head_channels=16", "arch.unet_norm_groups=8",
            "arch.unet_mult=[1,2]", "arch.unet_attention=[1]"]
    with initialize_config_dir(config_dir=os.path.join(ROOT, "configs"), version_base="1.3"):
        cfg = compose("train_toy", overrides=[f"run_dir={tmp_path}", f"export_dir={tmp_path / 'export'}", *arch,
                                              "ldm.batch_size=4", "ldm.max_steps=2", "ldm.decay_start=0",
                                              "ldm.warmup_steps=1"])
    train_toy.validate(cfg)
    vae_cfg, unet_cfg = train_toy.arch_configs(cfg)
    assert vae_cfg.embed_dim == vae_cfg.z_channels == unet_cfg.in_channels == unet_cfg.out_channels == 8
    cache = render_cache(str(tmp_path / "cache"), seed_range("train", 8), 128)
    out = train_toy.train_ldm(cfg, [cache], torch.randn(8, 8, 16, 16), 1.0, {})
    record = json.loads((tmp_path / "ldm" / "arch.json").read_text())        # what later runs are checked against
    assert record["latent_channels"] == 8 and record["unet_mult"] == [1, 2] and record["context_dim"] == 48
    vae_path = tmp_path / "vae.safetensors"
    save_file({k: v.contiguous() for k, v in AutoencoderKL(vae_cfg).state_dict().items()}, str(vae_path))
    train_toy.export(cfg, str(vae_path), load_file(out), 0.5)
    config = LDMConfig.from_dict(json.loads((tmp_path / "export" / "toy-ldm.json").read_text()))
    assert config.vae.embed_dim == 8 and config.unet.model_channels == 16 and config.unet.channel_mult == (1, 2)
    models = load_models(tmp_path / "export" / "toy-ldm.safetensors", config)
    z = models.vae.encode(torch.zeros(1, 3, 128, 128))
    assert z.shape == (1, 8, 16, 16)
    assert models.unet(z, torch.tensor([10]), models.text_encoder(torch.zeros(1, 77, dtype=torch.long))).shape == z.shape


def test_run_dir_holding_other_sizes_is_one_error_line(train_toy, tmp_path, capsys):
    """A VAE already in run_dir with 4 latent channels does not silently meet arch.latent_channels=8."""
    from safetensors.torch import save_file

    from ldm.models.autoencoder import AutoencoderKL
    (tmp_path / "vae").mkdir()
    save_file({k: v.contiguous() for k, v in AutoencoderKL(presets.TOY_VAE).state_dict().items()},
              str(tmp_path / "vae" / "vae.safetensors"))
    train_toy.precheck([f"run_dir={tmp_path}", "stages=[vae]"])                  # the same sizes: fine
    with pytest.raises(SystemExit) as exit_info:
        train_toy.precheck([f"run_dir={tmp_path}", "stages=[vae]", "arch.latent_channels=8"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and "other arch sizes" in err and "force=[vae]" in err, err
    train_toy.precheck([f"run_dir={tmp_path}", "stages=[vae]", "arch.latent_channels=8", "force=[vae]"])
    train_toy.precheck([f"run_dir={tmp_path}", "stages=[sr]", "arch.latent_channels=8"])   # the VAE is not trained


def test_run_dir_checks_a_resumable_checkpoint_and_the_arch_record(train_toy, tmp_path, capsys):
    """A UNet's last.ckpt of other sizes is refused (not a traceback inside Lightning), and so is an arch.json whose
    sizes leave every tensor shape alone (GroupNorm groups)."""
    from hydra import compose, initialize_config_dir

    from msbd.toy.train_ldm import LDMLitModule, LDMTrainConfig
    module = LDMLitModule(presets.TOY_UNET, presets.TOY_CLIP_TEXT, LDMTrainConfig())
    (tmp_path / "ldm").mkdir()
    torch.save({"state_dict": module.state_dict(), "global_step": 3}, tmp_path / "ldm" / "last.ckpt")
    train_toy.precheck([f"run_dir={tmp_path}", "stages=[ldm]"])                       # the shipped sizes: fine

    def refused(override: str, words: str) -> None:
        with pytest.raises(SystemExit):
            train_toy.precheck([f"run_dir={tmp_path}", "stages=[ldm]", *override.split()])
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and "\n" not in err and words in err and "force=[ldm]" in err, err

    refused("arch.unet_channels=48 arch.unet_head_channels=24 arch.unet_norm_groups=16",
            "last.ckpt was trained with other arch sizes")
    train_toy.precheck([f"run_dir={tmp_path}", "stages=[ldm]", "arch.unet_norm_groups=16"])   # same shapes: unseen
    with initialize_config_dir(config_dir=os.path.join(ROOT, "configs"), version_base="1.3"):
        train_toy.write_arch(compose("train_toy", overrides=[f"run_dir={tmp_path}"]), "ldm")   # as training does
    refused("arch.unet_norm_groups=16", "unet_norm_groups=32")                # now the record tells


def test_a_raised_budget_resumes_a_finished_stage_and_a_spent_one_is_skipped(train_toy, tmp_path):
    """make toy-v2 with ldm.max_steps raised after the UNet stopped at its old budget trains on from last.ckpt (the
    stage had written ldm.safetensors, which alone used to mark it done); with the budget spent it is skipped."""
    from hydra import compose, initialize_config_dir

    from msbd.toy.data import render_cache, seed_range

    def cfg(steps: int):
        with initialize_config_dir(config_dir=os.path.join(ROOT, "configs"), version_base="1.3"):
            return compose("train_toy", overrides=[f"run_dir={tmp_path}", "ldm.batch_size=4", f"ldm.max_steps={steps}",
                                                   "ldm.decay_start=0", "ldm.warmup_steps=1", "ldm.lr=1e-2"])
    cache = render_cache(str(tmp_path / "cache"), seed_range("train", 8), 128)
    latents, ldm_dir = torch.randn(8, 4, 16, 16), str(tmp_path / "ldm")
    out = train_toy.train_ldm(cfg(2), [cache], latents, 1.0, {})
    first = load_file(out)
    minutes, steps = train_toy.stage_progress(ldm_dir)
    assert steps == 2 and 0 < minutes < 1 and train_toy.stage_finished(out, ldm_dir, 60, 2)
    assert not train_toy.stage_finished(out, ldm_dir, 60, 4) and not train_toy.stage_finished(out, ldm_dir, 60)
    assert train_toy.stage_finished(out, ldm_dir, minutes, 4)                    # the minutes alone spent
    card: dict = {}
    assert train_toy.train_ldm(cfg(4), [cache], latents, 1.0, card) == out
    assert train_toy.stage_progress(ldm_dir)[1] == 4 and "ldm" in card                  # trained on, not anew
    key = "model.diffusion_model.out.2.weight"
    assert not torch.equal(load_file(out)[key], first[key])
    stamp, card = os.path.getmtime(out), {}
    train_toy.train_ldm(cfg(4), [cache], latents, 1.0, card)
    assert "ldm" not in card and os.path.getmtime(out) == stamp                      # spent: skipped, untouched
    assert train_toy.stage_finished(out, ldm_dir, 0.0)                               # a spent time budget too
    assert not train_toy.stage_finished(str(tmp_path / "none.safetensors"), ldm_dir, 60)   # no output: not done


def test_raising_the_vae_budget_under_a_trained_unet_is_one_error_line(train_toy, tmp_path, capsys):
    """Training the VAE on would change the latents the UNet learned and the encoder the decoder fine-tune froze:
    refused unless the budget stays spent or those stages are forced to start again."""
    from hydra import compose, initialize_config_dir
    from safetensors.torch import save_file
    with initialize_config_dir(config_dir=os.path.join(ROOT, "configs"), version_base="1.3"):
        cfg = compose("train_toy", overrides=[f"run_dir={tmp_path}"])
    train_toy.write_arch(cfg, "vae")
    save_file({"x": torch.zeros(1)}, str(tmp_path / "vae" / "vae.safetensors"))
    torch.save({"global_step": 9, "callbacks": {"Timer": {"time_elapsed": {"train": 300.06}}}},
               tmp_path / "vae" / "last.ckpt")                           # 5.001 min
    run = [f"run_dir={tmp_path}", "stages=[vae]"]

    def refused(override: str, *words: str) -> None:
        with pytest.raises(SystemExit):
            train_toy.precheck(run + override.split())
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and "\n" not in err and all(w in err for w in words), err

    train_toy.precheck(run + ["vae.max_minutes=8"])                   # nothing built on it yet: it may train on
    (tmp_path / "ldm").mkdir()
    (tmp_path / "ldm" / "ldm.safetensors").write_bytes(b"x")
    train_toy.precheck(run + ["vae.max_minutes=5"])                   # spent: skipped, nothing changes
    refused("vae.max_minutes=8", "has had 5.0 min", "the ldm stage", "force=[ldm]")
    train_toy.precheck(run[:1] + ["stages=[vae,ldm]", "force=[ldm]", "vae.max_minutes=8"])   # the UNet starts again
    (tmp_path / "decoder").mkdir()
    (tmp_path / "decoder" / "vae.safetensors").write_bytes(b"x")
    refused("stages=[vae,ldm] force=[ldm] vae.max_minutes=8", "the decoder stage", "force=[decoder]")
    (tmp_path / "vae" / "last.ckpt").write_bytes(b"truncated")          # killed mid-write: one line, not a traceback
    refused("vae.max_minutes=5", "error: cannot read", "force=[vae]")


@pytest.mark.parametrize("stage", ["vae", "decoder"])
def test_the_vae_and_decoder_stages_train_on_when_their_budget_is_raised(train_toy, tmp_path, monkeypatch, stage):
    """Both stages follow the spent budget, not the export's presence (_fit stubbed: only whether it is called)."""
    from hydra import compose, initialize_config_dir
    from safetensors.torch import save_file

    from ldm.models.autoencoder import AutoencoderKL
    calls = []
    monkeypatch.setattr(train_toy, "_fit", lambda *a, **k: calls.append(a[3]) or 0.0)
    monkeypatch.setattr(train_toy, "_crop_loader", lambda *a: None)
    vae = str(tmp_path / "init.safetensors")
    save_file({k: v.contiguous() for k, v in AutoencoderKL(presets.TOY_VAE).state_dict().items()}, vae)
    (tmp_path / stage).mkdir()
    save_file({"x": torch.zeros(1)}, str(tmp_path / stage / "vae.safetensors"))
    torch.save({"global_step": 9, "callbacks": {"Timer": {"time_elapsed": {"train": 600.0}}}},
               tmp_path / stage / "last.ckpt")

    def run(minutes: float) -> None:
        with initialize_config_dir(config_dir=os.path.join(ROOT, "configs"), version_base="1.3"):
            cfg = compose("train_toy", overrides=[f"run_dir={tmp_path}", f"{stage}.max_minutes={minutes}"])
        if stage == "vae":
            train_toy.train_vae(cfg, None, {})
        else:
            train_toy.train_decoder(cfg, None, vae, {})
    run(10.0)
    assert calls == []                                                # 10 minutes spent: skipped
    run(25.0)
    assert calls == [25.0]                                            # raised: trained on to the new total


def test_unreadable_checkpoint_of_any_trained_stage_is_one_error_line(train_toy, tmp_path, capsys):
    (tmp_path / "ldm").mkdir()
    (tmp_path / "ldm" / "last.ckpt").write_bytes(b"truncated")
    with pytest.raises(SystemExit):
        train_toy.precheck([f"run_dir={tmp_path}", "stages=[ldm]"])
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot read") and "\n" not in err and "force=[ldm]" in err, err
    train_toy.precheck([f"run_dir={tmp_path}", "stages=[ldm]", "force=[ldm]"])   # forced: moved aside, not read


def test_a_vae_taken_from_init_trains_on_once_it_has_minutes(train_toy, tmp_path):
    from omegaconf import OmegaConf
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "vae.safetensors").write_bytes(b"x")
    cfg = OmegaConf.create({"run_dir": str(tmp_path), "vae": {"init": "some.safetensors", "max_minutes": 0.0}})
    assert not train_toy.vae_trains_on(cfg)
    assert train_toy.vae_trains_on(OmegaConf.merge(cfg, {"vae": {"max_minutes": 10.0}}))
    assert not train_toy.vae_trains_on(OmegaConf.merge(cfg, {"vae": {"init": "", "max_minutes": 10.0}}))


def test_force_moves_the_stage_aside_and_a_forced_vae_retrains_the_unet(train_toy, tmp_path):
    from omegaconf import OmegaConf
    cfg = OmegaConf.create({"run_dir": str(tmp_path), "force": ["vae"], "stages": ["vae", "ldm"]})
    assert train_toy.forced_stages(cfg) == {"vae", "ldm"}
    assert train_toy.forced_stages(OmegaConf.merge(cfg, {"stages": ["vae"]})) == {"vae"}
    assert train_toy.forced_stages(OmegaConf.merge(cfg, {"force": ["sr"]})) == set()        # sr does not run
    (tmp_path / "ldm").mkdir()
    for name in ("last.ckpt", "ldm.safetensors", "arch.json", "latents.safetensors"):
        (tmp_path / "ldm" / name).write_bytes(name.encode())
    aside = train_toy.start_fresh(cfg, "ldm")
    assert sorted(os.listdir(aside)) == ["arch.json", "last.ckpt", "ldm.safetensors"]
    assert (tmp_path / "ldm" / "latents.safetensors").exists() and not (tmp_path / "ldm" / "last.ckpt").exists()
    assert train_toy.start_fresh(cfg, "vae") is None                                        # nothing there


def test_dry_run_validates_and_trains_nothing(tmp_path):
    """make toy-v2 checks its options in the foreground with dry_run=true before going to the background."""
    import subprocess
    import sys
    run = [sys.executable, os.path.join(ROOT, "scripts", "train_toy.py"), f"run_dir={tmp_path / 'run'}",
           f"export_dir={tmp_path / 'export'}", "dry_run=true"]
    ok = subprocess.run(run + ["arch.latent_channels=8"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert ok.returncode == 0 and "options valid" in ok.stdout, ok.stderr[-2000:]
    assert not (tmp_path / "export").exists() and not (tmp_path / "run").exists()          # nothing written
    bad = subprocess.run(run + ["arch.unet_channels=48"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith("error:") and bad.stderr.count("\n") == 1, bad.stderr


def test_snapshot_exports_the_ema_weights_of_last_ckpt_and_trains_nothing(train_toy, tmp_path, capsys):
    """snapshot=true: the ldm stage's EMA UNet (not the raw one) from last.ckpt, with the run's VAE, scale and sizes
    (its arch.json, whatever the command line says), as a loadable toy-ldm.safetensors + toy-ldm.json in
    run_dir/snapshots/step<N>/, nothing else written; a run without them is one line."""
    import json

    from hydra import compose, initialize_config_dir
    from safetensors.torch import load_file, save_file

    from ldm.checkpoint import load_models
    from ldm.config import LDMConfig
    from ldm.models.autoencoder import AutoencoderKL
    from msbd.toy.clip_model import clip_text_state
    from msbd.toy.train_ldm import LDMLitModule, LDMTrainConfig
    run = tmp_path / "run"
    args = [f"run_dir={run}", f"export_dir={tmp_path / 'export'}", "stages=[ldm]", "snapshot=true"]

    def refused(words: str, *extra: str) -> None:
        with pytest.raises(SystemExit) as exit_info:
            train_toy.precheck(args + list(extra))
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 2 and err.startswith("error: snapshot:") and "\n" not in err, err
        assert words in err, err

    refused("is missing")                                                         # nothing trained yet
    arch = ["arch.unet_channels=16", "arch.unet_head_channels=16", "arch.unet_norm_groups=8"]
    with initialize_config_dir(config_dir=os.path.join(ROOT, "configs"), version_base="1.3"):
        run_cfg = compose("train_toy", overrides=[f"run_dir={run}", *arch])
    vae_cfg, unet_cfg = train_toy.arch_configs(run_cfg)
    for stage in ("vae", "ldm"):
        train_toy.write_arch(run_cfg, stage)                                      # as the run's training does
    vae = AutoencoderKL(vae_cfg)
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(run / "vae" / "vae.safetensors"))
    save_file({"latents": torch.zeros(1), "scale": torch.tensor(0.4321)}, str(run / "ldm" / "latents.safetensors"))
    module = LDMLitModule(unet_cfg, presets.TOY_CLIP_TEXT, LDMTrainConfig())
    module.load_text_encoder(clip_text_state(load_file(presets.CLIP_WEIGHTS)))
    with torch.no_grad():
        for p in module.ema_unet.parameters():
            p.add_(0.25)                                                         # the EMA differs from the raw UNet
    torch.save({"state_dict": module.state_dict(), "global_step": 1234}, run / "ldm" / "last.ckpt")
    with pytest.raises(SystemExit) as exit_info:
        train_toy.precheck(args + ["arch.unet_channels=48", "arch.unet_head_channels=24", "arch.unet_norm_groups=16"])
    assert exit_info.value.code == 0
    folder = run / "snapshots" / "step1234"
    assert str(folder) in capsys.readouterr().out
    assert sorted(os.listdir(folder)) == ["toy-clip.safetensors", "toy-ldm.json", "toy-ldm.safetensors"]
    assert os.listdir(run / "snapshots") == ["step1234"] and not (tmp_path / "export").exists()
    config = LDMConfig.from_dict(json.loads((folder / "toy-ldm.json").read_text()))
    assert config.scale_factor == 0.4321 and config.unet.model_channels == 16
    models = load_models(folder / "toy-ldm.safetensors", config)               # text tower read through the link
    for name, want in module.ema_unet.state_dict().items():
        torch.testing.assert_close(models.unet.state_dict()[name], want.half().float())
    name = next(iter(vae.state_dict()))
    torch.testing.assert_close(models.vae.state_dict()[name], vae.state_dict()[name].half().float())
    assert not (run / "hydra").exists()
    (run / "vae" / "arch.json").write_text(json.dumps({"latent_channels": 8}))   # a VAE retrained since
    refused("disagree on latent_channels")
    train_toy.write_arch(run_cfg, "vae")
    (run / "ldm" / "last.ckpt").write_bytes(b"half a checkpoint")
    refused("try again")


def test_decoder_stage_tunes_the_decoder_only_and_the_export_ships_it(train_toy, tmp_path):
    """stage `decoder`: starts from the VAE stage's weights, changes the decoder side only (so the latents the UNet
    learnt stay the same), and the export's VAE is the tuned one; a forced VAE forces it too."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    from safetensors.torch import save_file

    from ldm.models.autoencoder import AutoencoderKL
    from msbd.toy.data import render_cache, seed_range
    with initialize_config_dir(config_dir=os.path.join(ROOT, "configs"), version_base="1.3"):
        cfg = compose("train_toy", overrides=[f"run_dir={tmp_path}", "stages=[decoder]", "decoder.max_minutes=0.05",
                                              "decoder.batch_size=4", "decoder.lr=1e-3"])
    train_toy.validate(cfg)
    torch.manual_seed(0)
    vae = AutoencoderKL(presets.TOY_VAE)
    (tmp_path / "vae").mkdir()
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(tmp_path / "vae" / "vae.safetensors"))
    assert train_toy.export_vae_path(cfg) == str(tmp_path / "vae" / "vae.safetensors")
    cache = render_cache(str(tmp_path / "cache"), seed_range("train", 8), 128)
    card: dict = {}
    out = train_toy.train_decoder(cfg, cache, str(tmp_path / "vae" / "vae.safetensors"), card)
    assert out == train_toy.export_vae_path(cfg) and card["decoder"]["minutes_last_call"] > 0
    tuned, start = load_file(out), vae.state_dict()
    changed = {k for k in start if not torch.equal(tuned[k], start[k])}
    assert changed and all(k.startswith(("decoder.", "post_quant_conv.")) for k in changed), sorted(changed)[:3]
    assert train_toy.forced_stages(OmegaConf.merge(cfg, {"force": ["vae"], "stages": ["vae", "decoder"]})) == {
        "vae", "decoder"}
