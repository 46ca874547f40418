"""The layer convention (pitfalls 1-2, docs/pitfalls.md) and model loading, on tiny random models."""

from __future__ import annotations

import pytest
import torch
from transformers import Wav2Vec2Model

from phonorm.errors import PhonormError
from phonorm.models.backbone import (
    LAYER_CONVENTION,
    all_layers,
    geometry,
    layer_names,
    load_backbone,
    make_config,
    uses_group_norm,
)


@pytest.fixture(scope="module", params=[False, True], ids=["group_norm", "stable_layer_norm"])
def tiny_model(request):
    torch.manual_seed(0)
    model = Wav2Vec2Model(make_config("tiny", stable_layer_norm=request.param))
    model.eval()
    return model


def test_all_layers_gives_n_plus_one_named_layers(tiny_model):
    wave = torch.randn(2, 8000)
    hidden = all_layers(tiny_model, wave)
    n = tiny_model.config.num_hidden_layers
    assert len(hidden) == n + 1
    assert layer_names(tiny_model.config) == [f"L{k}" for k in range(n + 1)]
    assert all(h.shape == (2, geometry(tiny_model.config).num_frames(8000), tiny_model.config.hidden_size)
               for h in hidden)
    assert "L0 = input to the first Transformer layer" in LAYER_CONVENTION


def test_last_layer_convention(tiny_model):
    """Post-LN (group norm) models: hidden_states[-1] is the last output itself. Pre-LN (stable
    layer norm) models: the final encoder LayerNorm is *not* in hidden_states[-1]."""
    wave = torch.randn(1, 12000)
    with torch.inference_mode():
        output = tiny_model(wave, output_hidden_states=True)
    last = output.hidden_states[-1]
    if tiny_model.config.do_stable_layer_norm:
        assert not torch.allclose(last, output.last_hidden_state, atol=1e-4)
        with torch.inference_mode():
            normed = tiny_model.encoder.layer_norm(last)
        torch.testing.assert_close(normed, output.last_hidden_state)
    else:
        torch.testing.assert_close(last, output.last_hidden_state)


def test_train_mode_is_refused(tiny_model):
    tiny_model.train()
    try:
        with pytest.raises(RuntimeError, match="eval mode"):
            all_layers(tiny_model, torch.randn(1, 4000))
    finally:
        tiny_model.eval()


def test_group_norm_models_refuse_an_attention_mask():
    model = Wav2Vec2Model(make_config("tiny")).eval()
    assert uses_group_norm(model.config)
    with pytest.raises(RuntimeError, match="attention mask"):
        all_layers(model, torch.randn(1, 4000), attention_mask=torch.ones(1, 4000, dtype=torch.long))


def test_geometry_matches_the_model_frame_count(tiny_model):
    grid = geometry(tiny_model.config)
    for samples in (400, 401, 719, 720, 16000, 16319):
        with torch.inference_mode():
            frames = tiny_model(torch.randn(1, samples)).last_hidden_state.shape[1]
        assert frames == grid.num_frames(samples), samples


def test_load_backbone_reads_a_saved_folder_with_extra_files(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "heads.safetensors").write_bytes(b"")  # a finetune folder holds heads beside it
    loaded = load_backbone(tmp_path / "m")
    assert not loaded.training
    wave = torch.randn(1, 6000)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(wave).last_hidden_state, tiny_model(wave).last_hidden_state)


def test_load_backbone_names_a_missing_folder(tmp_path):
    with pytest.raises(PhonormError, match="nothing-here"):
        load_backbone(tmp_path / "nothing-here")


def test_loading_is_quiet_about_unused_heads_and_warns_about_missing_weights(tmp_path, capfd):
    from safetensors.torch import load_file, save_file
    from transformers import Wav2Vec2ForPreTraining

    torch.manual_seed(0)
    Wav2Vec2ForPreTraining(make_config("tiny")).save_pretrained(tmp_path / "pre")
    load_backbone(tmp_path / "pre")
    out, err = capfd.readouterr()
    assert "UNEXPECTED" not in out + err and "warning" not in err  # the quantizer is expected to go unused

    Wav2Vec2Model(make_config("tiny")).save_pretrained(tmp_path / "cut")
    weights = load_file(str(tmp_path / "cut" / "model.safetensors"))
    lost = next(k for k in weights if "encoder.layers.0.attention.k_proj.weight" in k)
    del weights[lost]
    save_file(weights, str(tmp_path / "cut" / "model.safetensors"), metadata={"format": "pt"})
    load_backbone(tmp_path / "cut")
    assert "1 encoder weight(s) not in the checkpoint" in capfd.readouterr().err
