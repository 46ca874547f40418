"""frames.py: the one samples→frames formula and the per-frame label grids."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import Wav2Vec2Config, Wav2Vec2Model

from phonorm.frames import IGNORE_INDEX, FrameGeometry, frame_labels, segment_index_per_frame

BASE_LIKE = Wav2Vec2Config()  # wav2vec2-base: group-norm feature encoder, 12 layers
LARGE_LIKE = Wav2Vec2Config(  # wav2vec2-large(-lv60): layer-norm encoder, 24 layers, conv bias
    hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
    feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True,
)
ODD = Wav2Vec2Config(conv_dim=(8, 8, 8), conv_kernel=(7, 4, 3), conv_stride=(3, 3, 2))
LENGTHS = list(range(0, 1300)) + [1599, 1600, 1601, 16_000, 16_319, 16_320, 16_321, 160_000, 1_234_567]


def transformers_lengths(config, lengths):
    """transformers' own `_get_feat_extract_output_lengths` (it reads only `self.config`)."""
    holder = SimpleNamespace(config=config)
    out = Wav2Vec2Model._get_feat_extract_output_lengths(holder, torch.tensor(lengths))
    return out.tolist()


@pytest.mark.parametrize("config", [BASE_LIKE, LARGE_LIKE, ODD], ids=["base", "large", "odd"])
def test_num_frames_matches_transformers(config):
    geometry = FrameGeometry.from_config(config)
    theirs = transformers_lengths(config, LENGTHS)
    ours = [geometry.num_frames(n) for n in LENGTHS]
    # transformers goes negative below one receptive field; no frames is what the model outputs there.
    assert ours == [max(0, t) for t in theirs]


def test_default_geometry_is_wav2vec2():
    geometry = FrameGeometry()
    assert geometry == FrameGeometry.from_config(BASE_LIKE) == FrameGeometry.from_config(LARGE_LIKE.to_dict())
    assert geometry.hop == 320 and geometry.receptive_field == 400
    assert geometry.num_frames(16_000) == 49
    assert geometry.frames_for_duration(1.0) == 49
    np.testing.assert_allclose(geometry.frame_times(3), [0.0125, 0.0325, 0.0525])


def test_receptive_field_is_the_shortest_input_with_one_frame():
    for config in (BASE_LIKE, ODD):
        geometry = FrameGeometry.from_config(config)
        assert geometry.num_frames(geometry.receptive_field) == 1
        assert geometry.num_frames(geometry.receptive_field - 1) == 0
        assert geometry.num_frames(geometry.receptive_field + geometry.hop) == 2


@pytest.mark.parametrize("stable", [False, True], ids=["group-norm", "layer-norm"])
def test_num_frames_matches_a_real_forward(stable):
    from phonorm.models.backbone import make_config

    torch.manual_seed(0)
    config = make_config("tiny", stable_layer_norm=stable)
    model = Wav2Vec2Model(config).eval()
    geometry = FrameGeometry.from_config(config)
    for n in (400, 719, 720, 5_000, 8_123):
        with torch.no_grad():
            frames = model(torch.randn(1, n)).last_hidden_state.shape[1]
        assert frames == geometry.num_frames(n), n


def test_from_config_rejects_configs_without_a_conv_stack():
    with pytest.raises(ValueError, match="conv_kernel"):
        FrameGeometry.from_config({"hidden_size": 8})
    with pytest.raises(ValueError, match="differ in length"):
        FrameGeometry.from_config({"conv_kernel": [10, 3], "conv_stride": [5]})


# --------------------------------------------------------------------------- label grids
LABEL_MAPS = {"tone": ["1", "2", "3", "4", "5"], "phone": ["a", "b", "zh"], "sex": ["F", "M"]}


def _segments(rows):
    return pd.DataFrame(rows, columns=["start", "end", "phone", "tone"])


def _expected(rows, sex, n_frames, hop=0.02, centre=0.0125):
    """Brute force from the rule: the segment whose [start, end) holds the frame centre."""
    out = {t: [IGNORE_INDEX] * n_frames for t in ("tone", "phone", "sex")}
    for i in range(n_frames):
        t = centre + hop * i
        for start, end, phone, tone in rows:
            if start <= t < end:
                out["phone"][i] = LABEL_MAPS["phone"].index(phone) if phone in LABEL_MAPS["phone"] else IGNORE_INDEX
                out["tone"][i] = tone - 1 if tone > 0 else IGNORE_INDEX
                out["sex"][i] = LABEL_MAPS["sex"].index(sex)
    return out


def test_frame_labels_follow_the_rules():
    # an initial (no tone), a final with tone 2, a gap of silence, an unknown phone, a final with tone 5
    rows = [(0.10, 0.16, "zh", 0), (0.16, 0.40, "a", 2), (0.50, 0.58, "xx", 0), (0.58, 0.75, "b", 5)]
    grids = frame_labels(_segments(rows), {"sex": "M"}, 45, LABEL_MAPS)
    expected = _expected(rows, "M", 45)
    for task in ("tone", "phone", "sex"):
        assert grids[task].tolist() == expected[task], task
    tone, phone, sex = grids["tone"], grids["phone"], grids["sex"]
    assert set(tone[phone == 2].tolist()) == {IGNORE_INDEX}  # initials carry no tone
    assert set(tone[(phone == 0)].tolist()) == {1}  # tone 2 → class 1
    assert (sex[phone != IGNORE_INDEX] == 1).all()
    assert (sex == 1).sum() > (phone != IGNORE_INDEX).sum()  # the unknown phone is still speech
    assert tone[0] == phone[0] == sex[0] == IGNORE_INDEX  # leading silence
    assert grids["segment"][phone == 0].tolist() == [1] * int((phone == 0).sum())


def test_frame_centre_on_a_boundary_belongs_to_the_later_segment():
    # frame 5 has its centre at exactly 0.1125 s
    rows = [(0.0, 0.1125, "a", 1), (0.1125, 0.2, "b", 0)]
    grids = frame_labels(_segments(rows), {"sex": "F"}, 10, LABEL_MAPS)
    assert grids["phone"][4] == 0 and grids["phone"][5] == 1
    assert grids["tone"][4] == 0 and grids["tone"][5] == IGNORE_INDEX


def test_frame_labels_on_an_empty_utterance_and_other_grids():
    grids = frame_labels(_segments([]), {"sex": "F"}, 7, LABEL_MAPS)
    assert all((grids[t] == IGNORE_INDEX).all() for t in ("tone", "phone", "sex"))
    odd = FrameGeometry.from_config(ODD)  # hop 3*3*2 = 18 samples, receptive field (1-1)*2+3=3 → (3-1)*3+4=10 → (10-1)*3+7=34
    rows = [(0.0, 0.01, "a", 3), (0.01, 0.03, "b", 0)]
    grids = frame_labels(_segments(rows), {"sex": "F"}, odd.num_frames(480), LABEL_MAPS, geometry=odd)
    times = odd.frame_times(odd.num_frames(480))
    np.testing.assert_allclose(times, (np.arange(len(times)) * 18 + 17) / 16_000)
    assert grids["phone"].tolist() == [0 if t < 0.01 else 1 if t < 0.03 else IGNORE_INDEX for t in times]


def test_unknown_task_and_segment_index():
    with pytest.raises(ValueError, match="unknown task"):
        frame_labels(_segments([]), {"sex": "F"}, 3, {"stress": ["0", "1"]})
    index = segment_index_per_frame([0.0, 0.5], [0.2, 0.6], np.array([0.1, 0.2, 0.55, 0.7, -0.1]))
    assert index.tolist() == [0, -1, 1, -1, -1]
