"""MODEL_CARD.md generation: figures come from the run directory, measured quality sections survive a rewrite."""
import json

import pytest

from msbd.toy.card import QUALITY_BEGIN, QUALITY_END, replace_quality, write_model_card


def _run_dir(tmp_path, clean_prob=None, edge_prob=None):
    run = tmp_path / "run"
    (run / "clip").mkdir(parents=True)
    (run / "sr").mkdir()
    (run / "card.json").write_text(json.dumps({"config": {"data": {"n_train": 123, "size": 128}},
                                               "vae": {"train_psnr_last": 25.5}}))
    (run / "clip" / "metrics.json").write_text(json.dumps({"steps": 2177, "top1_retrieval": 0.865,
                                                           "config": {"n_train": 456}}))
    sr_config = {"sizes": [256, 512]} | ({} if clean_prob is None else {"clean_prob": clean_prob})
    sr_config |= {} if edge_prob is None else {"edge_prob": edge_prob}
    (run / "sr" / "metrics.json").write_text(json.dumps({"steps": 846, "gain_db": -0.871, "config": sr_config}))
    out = tmp_path / "out"
    out.mkdir()
    return run, out


def test_card_reports_the_run_and_keeps_measured_quality(tmp_path):
    run, out = _run_dir(tmp_path)
    text = write_model_card(run, out, "python scripts/train_toy.py x=1").read_text()
    assert "    python scripts/train_toy.py x=1" in text
    assert "| clip | 2177 | None | held-out top-1 retrieval: 0.865 |" in text
    assert "held-out PSNR gain over bicubic (dB): -0.871" in text
    assert "123 scenes rendered at 128 px" in text and "CLIP: 456 training renders" in text
    assert "clean_prob" not in text and "edge_prob" not in text   # the options were not used
    measured = replace_quality(text, "| vae_psnr_db | 29.3 | >= 27 | PASS |")
    (out / "MODEL_CARD.md").write_text(measured)
    again = write_model_card(run, out, "python scripts/train_toy.py x=2").read_text()
    assert "| vae_psnr_db | 29.3 | >= 27 | PASS |" in again and "x=2" in again
    assert again.count(QUALITY_BEGIN) == again.count(QUALITY_END) == 1


def test_card_is_written_into_a_new_export_dir(tmp_path):
    run, _ = _run_dir(tmp_path)
    path = write_model_card(run, tmp_path / "new" / "export", "python scripts/train_toy.py stages=[vae]")
    assert path == tmp_path / "new" / "export" / "MODEL_CARD.md" and "stages=[vae]" in path.read_text()


def test_card_names_clean_prob_when_used(tmp_path):
    run, out = _run_dir(tmp_path, clean_prob=0.5)
    assert "a share 0.5 of plain bicubic x4 (`clean_prob`)" in write_model_card(run, out, "cmd").read_text()


def test_stages_absent_from_the_run_keep_their_rows(tmp_path):
    run, out = _run_dir(tmp_path)
    shipped = "| ldm | 3200 | 48.7 | train_loss_last: 0.077 |"
    (out / "MODEL_CARD.md").write_text(f"| stage | steps | minutes | metric |\n|---|---|---|---|\n{shipped}\n"
                                       "| clip | 1 | 1.0 | held-out top-1 retrieval: 0.1 |\n")
    text = write_model_card(run, out, "cmd").read_text()
    assert shipped in text                                   # nothing about the UNet in run/: the old row stays
    assert "| clip | 2177 | None | held-out top-1 retrieval: 0.865 |" in text     # measured in run/: replaced
    assert "| sr | 846 | None | held-out PSNR gain over bicubic (dB): -0.871 |" in text   # no old row: measured


def test_partial_run_keeps_data_lines_command_and_scale(tmp_path):
    run, out = _run_dir(tmp_path)
    (run / "card.json").write_text(json.dumps({"vae": {"train_psnr_last": 25.5}}))      # no data config, no scale
    (out / "toy-ldm.json").write_text(json.dumps({"scale_factor": 0.35816}))
    (out / "MODEL_CARD.md").write_text("* VAE and UNet + text encoder: 16000 scenes rendered at 128 px\n"
                                       "    python scripts/train_toy.py vae.max_minutes=40\n"
                                       "| ldm | 3200 | 48.7 | train_loss_last: 0.077 |\n")
    text = write_model_card(run, out, "python scripts/train_toy.py stages=[sr]").read_text()
    assert "latent scale factor 0.35816" in text
    assert "* VAE and UNet + text encoder: 16000 scenes rendered at 128 px" in text and "n/a scenes" not in text
    assert "    python scripts/train_toy.py vae.max_minutes=40; then python scripts/train_toy.py stages=[sr]" in text


def test_card_names_warm_starts_and_the_equivariance_term(tmp_path):
    run, out = _run_dir(tmp_path)
    (run / "card.json").write_text(json.dumps({"vae": {"init": "old.safetensors", "equivariance_weight": 0.5,
                                                       "latent_blur_weight": 0.25},
                                               "ldm": {"init": ""}}))
    text = write_model_card(run, out, "cmd").read_text()
    assert "The vae stage was warm-started from `old.safetensors`" in text and "The ldm stage" not in text
    assert "scale-equivariance term with weight 0.5" in text and "latent-blur term with weight 0.25" in text
    plain = write_model_card(*_run_dir(tmp_path / "b"), "cmd").read_text()
    assert "warm-started" not in plain and "equivariance" not in plain and "latent-blur" not in plain


def test_card_names_edge_prob_when_used(tmp_path):
    run, out = _run_dir(tmp_path, edge_prob=0.5)
    text = write_model_card(run, out, "cmd").read_text()
    assert "a share 0.5 of HR patches centred on object outlines (`edge_prob`)" in text and "clean_prob" not in text


def test_replace_quality_needs_markers():
    with pytest.raises(ValueError, match="QUALITY markers"):
        replace_quality("# card without markers", "x")


def test_card_names_the_single_object_set_and_the_ldm_schedule(tmp_path):
    run, out = _run_dir(tmp_path)
    (run / "card.json").write_text(json.dumps({
        "config": {"data": {"n_train": 123, "size": 128}, "ldm": {"snr_gamma": 5.0, "decay_start": 200,
                                                                  "max_steps": 3000}},
        "data_single": {"n": 77, "sizes": [0.3, 0.6]}, "ldm": {"init": ""}}))
    text = write_model_card(run, out, "cmd").read_text()
    assert "77 single-object scenes" in text and "object sizes 0.3-0.6" in text
    assert "min-SNR weighting gamma 5.0" in text and "from step 200 to 3000" in text
    plain = write_model_card(*_run_dir(tmp_path / "b"), "cmd").read_text()
    assert "single-object scenes" not in plain and "min-SNR" not in plain


def test_card_names_the_frozen_clip_text_encoder_only_when_used(tmp_path):
    run, out = _run_dir(tmp_path)
    text = write_model_card(run, out, "python scripts/train_toy.py").read_text()
    assert "frozen" not in text and "* VAE and UNet + text encoder: 123 scenes" in text
    card = json.loads((run / "card.json").read_text())
    card["config"]["ldm"] = {"freeze_text": True}
    (run / "card.json").write_text(json.dumps(card))
    text = write_model_card(run, out, "python scripts/train_toy.py ldm.freeze_text=true").read_text()
    assert "* Text encoder: the text tower of the CLIP below" in text and "`ldm.freeze_text`" in text
    assert "* VAE and UNet: 123 scenes" in text


def test_linked_text_encoder_counted_from_the_clip_file(tmp_path):
    """The shipped toy-ldm file takes its text encoder from toy-clip (`msbd_text_from`): the card says so and counts
    the CLIP's text tower, the parameters the loader actually builds the text encoder from."""
    import shutil

    from ldm.checkpoint.formats import read_state_dict
    from msbd.toy import presets
    run, out = _run_dir(tmp_path)
    for f in (presets.LDM_WEIGHTS, presets.CLIP_WEIGHTS):
        shutil.copy(f, out)
    text = write_model_card(run, out, "cmd").read_text()
    loaded, _ = read_state_dict(out / "toy-ldm.safetensors")
    n_text = sum(v.numel() for k, v in loaded.items() if k.startswith("cond_stage_model.transformer."))
    assert (f"| `toy-ldm.safetensors` | text encoder (CLIPTextEncoder): not stored, read from the text tower of "
            f"`toy-clip.safetensors` (metadata `msbd_text_from`) | {n_text:,} | |") in text
    n_own = sum(v.numel() for k, v in loaded.items() if not k.startswith("cond_stage_model.transformer."))
    assert f"| `toy-ldm.safetensors` | VAE and UNet | {n_own:,} |" in text


def test_card_gives_the_sizes_from_the_exported_config_and_where_it_trained(tmp_path):
    """The sizes section is read from toy-ldm.json (an 8-channel, 48-wide run says so), with the threads and the
    run directory the run used."""
    import dataclasses

    from ldm.config import LDMConfig
    from msbd.toy import presets
    run, out = _run_dir(tmp_path)
    vae, unet = presets.toy_arch({"latent_channels": 8, "unet_channels": 48, "unet_head_channels": 24,
                                  "unet_norm_groups": 16})
    config = dataclasses.replace(presets.toy_ldm_config(0.45, vae=vae, unet=unet))
    (out / "toy-ldm.json").write_text(json.dumps(LDMConfig.to_dict(config)))
    card = json.loads((run / "card.json").read_text())
    card["config"] |= {"threads": 2, "run_dir": "train_runs/toy_v2"}
    (run / "card.json").write_text(json.dumps(card))
    text = write_model_card(run, out, "cmd").read_text()
    assert "* VAE: factor 8, 8 latent channels, 128 px native (16 x 16 latents)." in text
    assert "* UNet: widths 48 / 96 / 192, 2 ResBlocks per level" in text and "heads of 24 channels" in text
    assert "GroupNorm with 16 groups" in text and "Trained on a CPU with 2 threads" in text
    assert "`train_runs/toy_v2/<stage>/last.ckpt`" in text
    assert "## Sizes" not in write_model_card(*_run_dir(tmp_path / "b"), "cmd").read_text()   # no config exported


def test_card_has_a_decoder_row_only_when_the_run_tuned_the_decoder(tmp_path):
    run, out = _run_dir(tmp_path)
    assert "| decoder |" not in write_model_card(run, out, "cmd").read_text()
    card = json.loads((run / "card.json").read_text())
    card["decoder"] = {"train_psnr_last": 27.25, "minutes_last_call": 30.0}
    (run / "card.json").write_text(json.dumps(card))
    text = write_model_card(run, out, "cmd").read_text()
    assert "| decoder | None | None | train_psnr_last: 27.250 |" in text and "encoder frozen" in text
