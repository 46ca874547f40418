"""Every alignment label format of the common Mandarin aligners and corpora, each with a fixture
written from the format's own documentation; silence labels; --phone-map; one error for all unknown
labels; the tonal scheme (Cantonese Jyutping); small corpora and --split-by utterance.

Sources of the fixtures (public documentation and example files):
- MFA `mandarin_china_mfa` v3.0.0 dictionary: its meta.json / README phone list (139 phones), and
  pronunciations from the v3 dictionaries (位子 `w ej˥˩ ts z̩˩`, 兒子 `ʔ o˧˥ ɻ ts z̩˧`).
- MFA `mandarin_pinyin` v2.0.0 dictionary phone list (finals without nasal codas: `a1 ... va4`, codas `n ng`).
- Charsiu: its example alignment local/SSB00050015.TextGrid (Praat short text format, phones tier
  first, `[SIL]`, `iii4`) and its Mandarin preprocessor (zi → `z ii`, er → `e rr`).
- Kaldi AISHELL recipe CTM: `UTT 1 START DUR PHONE` with position suffixes `_B _I _E _S`, `SIL`.
- THCHS-30 Kaldi recipe local/dict/lexicon.txt (`l v4 sh ix4 ii iang2 ... s iy4 vv ve4`, `r iz4`, `ee er4`).
- Biaobei/CSMSC PhoneLabeling/*.interval: short-format TextGrids with one tier (PaddleSpeech and
  TensorFlowTTS read them so), `sil` at the ends, erhua as an r-final (`uanr2`).
- AISHELL-3 content.txt: one pinyin syllable per character (`广 guang3 州 zhou1 女 nv3`).
"""

from __future__ import annotations

import json
import subprocess
import sys
import unicodedata
from pathlib import Path

import pandas as pd
import pytest

from corpus_inputs import write_textgrid, write_wav
from phonorm.corpus.alignment import Alignment, Interval, is_silence
from phonorm.corpus.info import corpus_info, format_info
from phonorm.corpus.labelling import label_alignment
from phonorm.corpus.prepare import prepare_corpus
from phonorm.corpus.schemes import (
    MandarinScheme,
    SchemeError,
    TonalScheme,
    UnknownLabels,
)
from phonorm.corpus.store import PreparedCorpus
from phonorm.errors import InputError, PhonormError

# ----------------------------------------------------------------------------- MFA v3 phone set
MFA_V3_PHONES = (
    "a aj aj˥ aj˥˩ aj˧ aj˧˥ aj˨˩˦ aj˩ aw aw˥ aw˥˩ aw˧ aw˧˥ aw˨˩˦ aw˩ a˥ a˥˩ a˧ a˧˥ a˨˩˦ a˩ e ej ej˥ ej˥˩ "
    "ej˧ ej˧˥ ej˨˩˦ ej˩ e˥ e˥˩ e˧ e˧˥ e˨˩˦ e˩ f i i˥ i˥˩ i˧ i˧˥ i˨˩˦ i˩ j k kʰ kʷ l m mʲ m̩˥ m̩˧ m̩˨˩˦ n "
    "n̩˥˩ n̩˧˥ n̩˨˩˦ o ow ow˥ ow˥˩ ow˧ ow˧˥ ow˨˩˦ ow˩ o˥ o˥˩ o˧ o˧˥ o˨˩˦ o˩ p pʰ pʲ pʷ s t ts tsʰ tɕ tɕʰ "
    "tɕʷ tʰ tʲ tʷ u u˥ u˥˩ u˧ u˧˥ u˨˩˦ u˩ w x xʷ y y˥ y˥˩ y˧ y˧˥ y˨˩˦ y˩ z̩ z̩˥ z̩˥˩ z̩˧ z̩˧˥ z̩˨˩˦ z̩˩ "
    "ŋ ŋ̍ ŋ̍˥˩ ŋ̍˧˥ ŋ̍˨˩˦ ɕ ɕʷ ə ə˥ ə˥˩ ə˧ ə˧˥ ə˨˩˦ ə˩ ɥ ɲ ɻ ʂ ʈʂ ʈʂʰ ʎ ʐ ʐ̩ ʐ̩˥ ʐ̩˥˩ ʐ̩˧ ʐ̩˧˥ ʐ̩˨˩˦ ʐ̩˩ ʔ"
).split()
# The consonants of that list (the tone-less, non-syllabic phones), written out by hand.
MFA_V3_CONSONANTS = set(
    "f j k kʰ kʷ l m mʲ n p pʰ pʲ pʷ s t ts tsʰ tɕ tɕʰ tɕʷ tʰ tʲ tʷ w x xʷ ŋ ɕ ɕʷ ɥ ɲ ɻ ʂ ʈʂ ʈʂʰ ʎ ʐ ʔ".split()
)
# v3 tone letters: ˥ tone 1, ˧˥ tone 2, ˨˩˦ tone 3, ˥˩ tone 4; ˧ and ˩ (and none) the neutral tone,
# as the dictionary's neutral syllables show (位子 ts z̩˩ after a 4th tone, 兒子 ts z̩˧ after a 2nd).
MFA_V3_TONES = {"˥": 1, "˧˥": 2, "˨˩˦": 3, "˥˩": 4, "˧": 5, "˩": 5, "": 5}


def test_every_phone_of_mfa_v3_mandarin_parses_with_its_tone():
    assert len(MFA_V3_PHONES) == 139 and len(set(MFA_V3_PHONES)) == 139
    assert sum(p.startswith(("aj", "aw", "ej", "ow")) for p in MFA_V3_PHONES) == 28
    # one alignment holding every phone, as an MFA v3 TextGrid would (tone letters mark it as IPA)
    alignment = Alignment(phones=[Interval(k, k + 1, p) for k, p in enumerate(MFA_V3_PHONES)])
    labelled, _ = label_alignment(alignment, MandarinScheme())
    assert len(labelled) == 139
    for phone, parsed in zip(MFA_V3_PHONES, labelled):
        letters = "".join(c for c in phone if c in "˥˦˧˨˩")
        toneless = phone[: len(phone) - len(letters)]
        assert parsed.phone == unicodedata.normalize("NFC", toneless), phone
        if phone in MFA_V3_CONSONANTS:
            assert (parsed.tone, parsed.is_final) == (0, False), phone
        else:
            assert (parsed.tone, parsed.is_final) == (MFA_V3_TONES[letters], True), phone


def test_kaldi_position_suffixes_in_textgrids():
    assert MandarinScheme().parse("ong1_E") == MandarinScheme().parse("ong1")
    assert MandarinScheme().parse("zh_B").phone == "zh" and TonalScheme().parse("wong4_S").phone == "wong"


def test_mfa_v2_notation_still_parses():
    scheme = MandarinScheme()
    expected = {"ai˥˥": 1, "au˧˥": 2, "ei˨˩˦": 3, "ou˥˩": 4, "a˦": 5, "a˨": 5, "a˩": 5, "ʐ̩˥˩": 4}
    assert {p: scheme.parse(p).tone for p in expected} == expected


# ----------------------------------------------------------------------------- helpers
def _corpus(root: Path, utterances: dict[str, tuple[str, float]], speakers: dict[str, str]) -> dict:
    """wav/ for each utterance (id → (speaker, seconds)), speakers.tsv; alignments are the test's."""
    for utt, (_, seconds) in utterances.items():
        write_wav(root / "wav" / f"{utt}.wav", seconds, seed=len(utt))
    (root / "speakers.tsv").write_text("speaker\tsex\n" + "".join(f"{s}\t{x}\n" for s, x in speakers.items()))
    return dict(audio=root / "wav", speakers=root / "speakers.tsv")


def _prepare(out, corpus, alignments, **options):
    return prepare_corpus(out, audio_dir=corpus["audio"], alignments=alignments, speakers_file=corpus["speakers"],
                          **options)


def _intervals(pairs, start=0.0):
    """[(label, seconds), ...] → [(start, end, label)] back to back."""
    out, t = [], start
    for label, seconds in pairs:
        out.append((round(t, 4), round(t + seconds, 4), label))
        t += seconds
    return out


def _segments(folder) -> pd.DataFrame:
    return PreparedCorpus(folder).segments


# ----------------------------------------------------------------------------- MFA v3 TextGrid
def test_mfa_v3_textgrid_prepares_with_pypinyin_tones(tmp_path):
    # 位子 (wei4 zi5) 來 (lai2) 兒子 (er2 zi5), as the v3 dictionaries spell them
    phones = _intervals([("", 0.1), ("w", 0.05), ("ej˥˩", 0.2), ("ts", 0.06), ("z̩˩", 0.12), ("l", 0.05),
                         ("aj˧˥", 0.2), ("ʔ", 0.03), ("o˧˥", 0.15), ("ɻ", 0.05), ("ts", 0.06), ("z̩˧", 0.12), ("", 0.1)])
    words = [(0.1, 0.53, "位子"), (0.53, 0.78, "來"), (0.78, 1.19, "兒子")]
    grids = tmp_path / "tg"
    write_textgrid(grids / "A_1.TextGrid", words, phones, 1.29)
    corpus = _corpus(tmp_path, {"A_1": ("A", 1.29)}, {"A": "F"})
    _prepare(tmp_path / "p", corpus, grids)
    segs = _segments(tmp_path / "p")
    assert segs["phone"].tolist() == ["w", "ej", "ts", "z̩", "l", "aj", "ʔ", "o", "ɻ", "ts", "z̩"]
    assert segs.loc[segs["is_final"], "tone"].tolist() == [4, 5, 2, 2, 5]
    assert segs["syllable"].tolist() == ["wei4"] * 2 + ["zi5"] * 2 + ["lai2"] * 2 + ["er2"] * 3 + ["zi5"] * 2


# ----------------------------------------------------------------------------- Charsiu
def _charsiu_textgrid(intervals, words, end) -> str:
    """Praat short text format with the phones tier first, as Charsiu writes it."""
    def tier(name, items):
        body = "".join(f"{s:g}\n{e:g}\n\"{label}\"\n" for s, e, label in items)
        return f"\"IntervalTier\"\n\"{name}\"\n0\n{end:g}\n{len(items)}\n{body}"
    return f"File type = \"ooTextFile\"\nObject class = \"TextGrid\"\n\n0\n{end:g}\n<exists>\n2\n" + \
        tier("phones", intervals) + tier("words", words)


CHARSIU_PHONES = [("[SIL]", 0.5), ("j", 0.09), ("ing1", 0.21), ("g", 0.09), ("uang3", 0.18), ("zh", 0.12),
                  ("ou1", 0.17), ("r", 0.18), ("iii4", 0.15), ("z", 0.1), ("ii4", 0.15), ("[SIL]", 0.3)]
CHARSIU_WORDS = [("[SIL]", 0.5), ("经", 0.3), ("广", 0.27), ("州", 0.29), ("日", 0.33), ("字", 0.25), ("[SIL]", 0.3)]


def test_charsiu_short_textgrid_with_sil_prepares(tmp_path):
    grids = tmp_path / "charsiu"
    grids.mkdir()
    end = sum(d for _, d in CHARSIU_PHONES)
    (grids / "F1_0001.TextGrid").write_text(
        _charsiu_textgrid(_intervals(CHARSIU_PHONES), _intervals(CHARSIU_WORDS), end), encoding="utf-8")
    corpus = _corpus(tmp_path, {"F1_0001": ("F1", end)}, {"F1": "F"})
    _prepare(tmp_path / "p", corpus, grids)
    segs = _segments(tmp_path / "p")
    assert segs["phone"].tolist() == ["j", "ing", "g", "uang", "zh", "ou", "r", "iii", "z", "ii"]
    assert segs.loc[segs["is_final"], "tone"].tolist() == [1, 3, 1, 4, 4]
    assert segs["syllable"].tolist() == ["jing1"] * 2 + ["guang3"] * 2 + ["zhou1"] * 2 + ["ri4"] * 2 + ["zi4"] * 2
    assert segs["start"].iloc[0] == pytest.approx(0.5)  # [SIL] dropped, times kept


def test_charsiu_apical_and_er_without_characters():
    # no words tier: syllables are spelled from the phones (Charsiu's er is `e rr`)
    alignment = Alignment(phones=[Interval(s, e, lab) for s, e, lab in _intervals(
        [("zh", 0.1), ("iii1", 0.2), ("s", 0.1), ("ii4", 0.2), ("e2", 0.2), ("rr", 0.1)])])
    phones, _ = label_alignment(alignment, MandarinScheme())
    assert [(p.phone, p.tone, p.syllable) for p in phones] == [
        ("zh", 0, "zhi1"), ("iii", 1, "zhi1"), ("s", 0, "si4"), ("ii", 4, "si4"), ("e", 2, "er2"), ("rr", 0, "er2")]


# ----------------------------------------------------------------------------- erhua spellings
@pytest.mark.parametrize("spelling, expected", [
    ([("h", 0.1), ("uar1", 0.3)], [("h", 0, "huar1"), ("uar", 1, "huar1")]),              # Biaobei r-final
    ([("h", 0.1), ("ua1", 0.2), ("r5", 0.1)], [("h", 0, "huar1"), ("ua", 1, "huar1"), ("rr", 0, "huar1")]),
    ([("h", 0.1), ("ua1", 0.2), ("rr", 0.1)], [("h", 0, "huar1"), ("ua", 1, "huar1"), ("rr", 0, "huar1")]),
    ([("h", 0.1), ("ua1", 0.2), ("er5", 0.1)], [("h", 0, "hua1"), ("ua", 1, "hua1"), ("er", 5, "er5")]),
])
def test_erhua_in_its_common_spellings(spelling, expected):
    alignment = Alignment(phones=[Interval(s, e, lab) for s, e, lab in _intervals(spelling)])
    phones, _ = label_alignment(alignment, MandarinScheme())
    assert [(p.phone, p.tone, p.syllable) for p in phones] == expected


# ----------------------------------------------------------------------------- THCHS-30, MFA pinyin, AISHELL-3
@pytest.mark.parametrize("labels, syllables", [
    # THCHS-30 lexicon: 绿 是 阳 ... 四 月 八 日 二
    ("l v4 sh ix4 ii iang2 s iy4 vv ve4 b a1 r iz4 ee er4 uu un2",
     ["lv4", "shi4", "yang2", "si4", "yue4", "ba1", "ri4", "er4", "wen2"]),
    # MFA pinyin dictionary: nasal codas apart, `va` the üa of yuan
    ("zh u1 ng j va2 n x i1 n g ua1 n", ["zhong1", "juan2", "xin1", "guan1"]),
    # AISHELL-3 labels: one syllable per character, with tone
    ("guang3 zhou1 nv3 da4 xue2 sheng1 lve4", ["guang3", "zhou1", "nv3", "da4", "xue2", "sheng1", "lve4"]),
])
def test_pinyin_phone_sets_give_syllables(labels, syllables):
    alignment = Alignment(phones=[Interval(s, e, lab) for s, e, lab in _intervals([(x, 0.1) for x in labels.split()])])
    phones, _ = label_alignment(alignment, MandarinScheme())
    spelled = [p.syllable for p in phones if p.is_final]
    assert spelled == syllables
    assert [p.tone for p in phones if p.is_final] == [int(s[-1]) for s in syllables]
    assert all(p.tone == 0 for p in phones if not p.is_final)


def test_whole_syllable_labels_are_one_segment_each(tmp_path):
    grids = tmp_path / "tg"
    pairs = [("sil", 0.1), ("guang3", 0.25), ("zhou1", 0.25), ("nv3", 0.2), ("sil", 0.1)]
    write_textgrid(grids / "S1_1.TextGrid", [], _intervals(pairs), 0.9)
    corpus = _corpus(tmp_path, {"S1_1": ("S1", 0.9)}, {"S1": "M"})
    _prepare(tmp_path / "p", corpus, grids)
    segs = _segments(tmp_path / "p")
    assert segs[["phone", "tone", "syllable"]].values.tolist() == [
        ["guang", 3, "guang3"], ["zhou", 1, "zhou1"], ["nv", 3, "nv3"]]
    with pytest.raises(SchemeError):
        MandarinScheme().parse("xyz3")  # not a pinyin syllable


# ----------------------------------------------------------------------------- Biaobei
def test_biaobei_interval_files_prepare(tmp_path):
    pairs = [("sil", 0.2), ("k", 0.08), ("a2", 0.15), ("er2", 0.2), ("b", 0.06), ("ao3", 0.2), ("sp1", 0.05),
             ("zh", 0.08), ("iii1", 0.15), ("h", 0.07), ("uanr2", 0.25), ("sil", 0.2)]
    end = round(sum(d for _, d in pairs), 4)
    body = "".join(f"{s:g}\n{e:g}\n\"{label}\"\n" for s, e, label in _intervals(pairs))
    folder = tmp_path / "PhoneLabeling"
    folder.mkdir()
    (folder / "000001.interval").write_text(
        f"File type = \"ooTextFile\"\nObject class = \"TextGrid\"\n\n0\n{end:g}\n<exists>\n1\n\"IntervalTier\"\n"
        f"\"000001\"\n0\n{end:g}\n{len(pairs)}\n{body}", encoding="utf-8")
    corpus = _corpus(tmp_path, {"000001": ("000001", end)}, {"000001": "F"})
    _prepare(tmp_path / "p", corpus, folder)
    segs = _segments(tmp_path / "p")
    assert segs["phone"].tolist() == ["k", "a", "er", "b", "ao", "zh", "iii", "h", "uanr"]
    assert segs["syllable"].tolist() == ["ka2", "ka2", "er2", "bao3", "bao3", "zhi1", "zhi1", "huanr2", "huanr2"]


# ----------------------------------------------------------------------------- Kaldi CTM
KALDI_CTM = """\
BAC009S0002W0122 1 0.00 0.31 SIL
BAC009S0002W0122 1 0.31 0.06 zh_B
BAC009S0002W0122 1 0.37 0.17 ong1_E
BAC009S0002W0122 1 0.54 0.05 g_B
BAC009S0002W0122 1 0.59 0.20 uo2_E
BAC009S0002W0122 1 0.79 0.04 sh_B
BAC009S0002W0122 1 0.83 0.14 ix4_E
BAC009S0002W0122 1 0.97 0.20 SIL_S
BAC009S0002W0123 1 0.00 0.20 SIL
BAC009S0002W0123 1 0.20 0.18 ii_B
BAC009S0002W0123 1 0.38 0.20 i1_E
BAC009S0002W0123 1 0.58 0.07 s_B
BAC009S0002W0123 1 0.65 0.15 iy4_E
BAC009S0002W0123 1 0.80 0.20 sil
"""


def test_kaldi_ctm_with_position_suffixes(tmp_path):
    (tmp_path / "ali.ctm").write_text(KALDI_CTM)
    corpus = _corpus(tmp_path, {"BAC009S0002W0122": ("S0002", 1.2), "BAC009S0002W0123": ("S0002", 1.0)},
                     {"S0002": "F"})
    # Kaldi's utterance ids hold the speaker id inside: a regex rule finds it
    report = _prepare(tmp_path / "p", corpus, tmp_path / "ali.ctm", fmt="ctm", split_by="utterance",
                      speaker_from=r"regex:BAC009(S\d{4})W")
    assert set(PreparedCorpus(tmp_path / "p").all_utterances["speaker"]) == {"S0002"}
    segs = _segments(tmp_path / "p")
    assert segs["phone"].tolist() == ["zh", "ong", "g", "uo", "sh", "ix", "ii", "i", "s", "iy"]
    assert segs["syllable"].tolist() == ["zhong1"] * 2 + ["guo2"] * 2 + ["shi4"] * 2 + ["yi1"] * 2 + ["si4"] * 2
    assert "2 utterances" in report


# ----------------------------------------------------------------------------- silence
@pytest.mark.parametrize("label", ["", "sil", "SIL", "SIL_S", "sil_B", "sp", "spn", "SPN", "NSN", "pau", "<eps>",
                                   "<unk>", "[SIL]", "<SIL>", "[SPN]", "[NOISE]", "<NOISE>", "[laughter]",
                                   "[bracketed]", "sp1", "#", "#3", "silence", "h#"])
def test_silence_labels_of_common_aligners(label):
    assert is_silence(label)


@pytest.mark.parametrize("label", ["a1", "sh", "s", "spa", "i˥", "ʔ", "ng", "[a", "x]"])
def test_speech_labels_are_not_silence(label):
    assert not is_silence(label)


def test_user_silence_labels(tmp_path):
    grids = tmp_path / "tg"
    write_textgrid(grids / "A_1.TextGrid", [], _intervals([("LAUGH", 0.2), ("m", 0.1), ("a1", 0.2), ("breath", 0.1)]), 0.6)
    corpus = _corpus(tmp_path, {"A_1": ("A", 0.6)}, {"A": "F"})
    with pytest.raises(InputError, match="'LAUGH' x1.*'breath' x1|'breath' x1.*'LAUGH' x1"):
        _prepare(tmp_path / "p", corpus, grids)
    _prepare(tmp_path / "p", corpus, grids, silence=["laugh", "BREATH"])
    assert _segments(tmp_path / "p")["phone"].tolist() == ["m", "a"]
    assert json.loads((tmp_path / "p" / "labels.json").read_text())["provenance"]["settings"]["silence"] == ["breath", "laugh"]


# ----------------------------------------------------------------------------- unknown labels, phone map
def _english_corpus(tmp_path):
    grids = tmp_path / "tg"
    utterances = {}
    for k, labels in enumerate([["n", "i3", "HH", "AH0", "L", "OW1"], ["HH", "AH0", "g", "uo2"], ["k", "ai1", "K"]]):
        utt = f"A_{k}"
        write_textgrid(grids / f"{utt}.TextGrid", [], _intervals([(lab, 0.1) for lab in labels]), 0.1 * len(labels))
        utterances[utt] = ("A", 0.1 * len(labels))
    return grids, _corpus(tmp_path, utterances, {"A": "F"})


def test_one_error_lists_every_unknown_label_with_count_and_first_file(tmp_path):
    grids, corpus = _english_corpus(tmp_path)
    with pytest.raises(InputError) as err:
        _prepare(tmp_path / "p", corpus, grids)
    message = str(err.value)
    assert "5 phone label(s)" in message and "in 3 utterance(s)" in message
    for text in ("'HH' x2 (first in A_0.TextGrid [A_0])", "'AH0' x2 (first in A_0.TextGrid [A_0])",
                 "'L' x1 (first in A_0.TextGrid", "'OW1' x1", "'K' x1 (first in A_2.TextGrid [A_2])"):
        assert text in message
    assert "--phone-map" in message and "\n" not in message
    assert not (tmp_path / "p" / "labels.json").exists()
    # with --skip-bad the three utterances are skipped and the summary lists the labels
    with pytest.raises(PhonormError, match="no utterance could be prepared"):
        _prepare(tmp_path / "p", corpus, grids, skip_bad=True)


def test_phone_map_applies_before_the_scheme(tmp_path):
    grids, corpus = _english_corpus(tmp_path)
    table = tmp_path / "map.tsv"
    table.write_text("label\tphone\ttone\n# English phones\nHH\th\nAH0\te5\nL\tl\t0\nOW1\tou\t3\nK\tsil\n")
    _prepare(tmp_path / "p", corpus, grids, phone_map=table)
    segs = _segments(tmp_path / "p")
    first = segs[segs["utterance_id"] == "A_0"]
    assert first[["phone", "tone", "is_final"]].values.tolist() == [
        ["n", 0, False], ["i", 3, True], ["h", 0, False], ["e", 5, True], ["l", 0, False], ["ou", 3, True]]
    assert "K" not in set(segs["phone"]) and len(segs[segs["utterance_id"] == "A_2"]) == 2


@pytest.mark.parametrize("text, problem", [
    ("a\tb\tc\td\n", "got 4"), ("a\tb\t7\n", "not a Mandarin tone"), ("a\tb\tx\n", "not a whole number"),
    ("a\tb\na\tc\n", "mapped twice"), ("# nothing\n", "no rows"),
])
def test_bad_phone_map_is_named(tmp_path, text, problem):
    grids, corpus = _english_corpus(tmp_path)
    table = tmp_path / "map.tsv"
    table.write_text(text)
    with pytest.raises(InputError, match=problem) as err:
        _prepare(tmp_path / "p", corpus, grids, phone_map=table)
    assert err.value.path == str(table)


# ----------------------------------------------------------------------------- tonal scheme: Cantonese
def test_jyutping_corpus_prepares_under_the_tonal_scheme(tmp_path):
    grids = tmp_path / "tg"
    # 黃 wong4, 詩 si1 (split s i1), 國 gwok3 (g wok3), 我 ngo5, 食 sik6 (s ik6)
    labels = ["sil", "wong4", "s", "i1", "g", "wok3", "ngo5", "s", "ik6", "sp"]
    write_textgrid(grids / "Y_1.TextGrid", [], _intervals([(x, 0.1) for x in labels]), 1.0)
    corpus = _corpus(tmp_path, {"Y_1": ("Y", 1.0)}, {"Y": "M"})
    with pytest.raises(InputError, match="'wok3' x1"):  # not Mandarin (wong4, s, i1 happen to be)
        _prepare(tmp_path / "p", corpus, grids)
    _prepare(tmp_path / "p", corpus, grids, scheme="tonal")
    segs = _segments(tmp_path / "p")
    assert segs[["phone", "tone"]].values.tolist() == [
        ["wong", 4], ["s", 0], ["i", 1], ["g", 0], ["wok", 3], ["ngo", 5], ["s", 0], ["ik", 6]]
    labels_json = json.loads((tmp_path / "p" / "labels.json").read_text())
    assert labels_json["scheme"] == "tonal" and labels_json["tasks"]["tone"] == ["1", "3", "4", "5", "6"]
    _prepare(tmp_path / "p6", corpus, grids, scheme="tonal", tones=[1, 2, 3, 4, 5, 6])
    assert json.loads((tmp_path / "p6" / "labels.json").read_text())["tasks"]["tone"] == ["1", "2", "3", "4", "5", "6"]
    with pytest.raises(InputError, match="'ik6' x1"):
        _prepare(tmp_path / "p5", corpus, grids, scheme="tonal", tones=[1, 2, 3, 4, 5])
    with pytest.raises(PhonormError, match="tonal scheme only"):
        _prepare(tmp_path / "p2", corpus, grids, tones=[1, 2])


def test_tonal_scheme_rejects_tone_zero():
    with pytest.raises(SchemeError, match="tone 0"):
        TonalScheme().parse("a0")
    with pytest.raises(SchemeError):
        TonalScheme([0, 1])
    alignment = Alignment(phones=[Interval(0, 0.1, "ba3"), Interval(0.1, 0.2, "a0"), Interval(0.2, 0.3, "a0")])
    with pytest.raises(UnknownLabels) as err:
        label_alignment(alignment, TonalScheme())
    assert dict(err.value.counts) == {"a0": 2}


# ----------------------------------------------------------------------------- small corpora
def _two_speaker_corpus(tmp_path):
    grids = tmp_path / "tg"
    utterances = {}
    for spk in ("F1", "M1"):
        for k in range(10):
            utt = f"{spk}_{k:02d}"
            write_textgrid(grids / f"{utt}.TextGrid", [], _intervals([("m", 0.1), ("a1", 0.2)], start=0.05), 0.4)
            utterances[utt] = (spk, 0.4)
    return grids, _corpus(tmp_path, utterances, {"F1": "F", "M1": "M"})


def test_small_corpus_says_the_split_cannot_be_speaker_disjoint(tmp_path):
    grids, corpus = _two_speaker_corpus(tmp_path)
    report = _prepare(tmp_path / "p", corpus, grids)
    assert "sex F has 1 speaker: no F utterance in dev or test" in report and "--split-by utterance" in report
    split = json.loads((tmp_path / "p" / "labels.json").read_text())["split"]
    assert split["by"] == "speaker" and split["speaker_disjoint"] is True and len(split["problems"]) == 2
    info = corpus_info(tmp_path / "p")
    assert info["split_by"] == "speaker" and info["splits"]["dev"] == 0 and info["split_problems"]
    assert "sex M has 1 speaker" in format_info(info)

    report = _prepare(tmp_path / "q", corpus, grids, split_by="utterance", dev=0.2, test=0.2)
    utts = PreparedCorpus(tmp_path / "q").all_utterances
    per = utts.groupby(["speaker", "split"]).size().to_dict()
    assert per == {(s, x): n for s in ("F1", "M1") for x, n in (("train", 6), ("dev", 2), ("test", 2))}
    split = json.loads((tmp_path / "q" / "labels.json").read_text())["split"]
    assert split["by"] == "utterance" and split["speaker_disjoint"] is False
    assert "not speaker-disjoint" in report
    info = corpus_info(tmp_path / "q")
    assert info["speaker_disjoint"] is False and any("not speaker-disjoint" in p for p in info["split_problems"])
    with pytest.raises(PhonormError, match="--split-by"):
        _prepare(tmp_path / "r", corpus, grids, split_by="sex")
    # the report's corpus section states it
    from phonorm.report.page import Page, Sources
    from phonorm.report.sections_inputs import section_corpus
    page = Page()
    sources = Sources(results=tmp_path, context={})
    sources.corpus = tmp_path / "q"
    section_corpus(page, sources)
    assert "<b>Note:</b> 2 speakers appear in more than one split: dev/test are not speaker-disjoint" in page.sections[0][2]


def test_cli_takes_the_new_options(tmp_path):
    grids, corpus = _two_speaker_corpus(tmp_path)
    table = tmp_path / "map.tsv"
    table.write_text("m\tm\t0\n")
    result = subprocess.run(
        [sys.executable, "-m", "phonorm.cli", "prepare", str(tmp_path / "p"), "--audio", str(corpus["audio"]),
         "--alignments", str(grids), "--speakers", str(corpus["speakers"]), "--split-by", "utterance",
         "--silence", "BREATH", "--silence", "<x>", "--phone-map", str(table), "--scheme", "tonal", "--tones", "1,2"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    settings = json.loads((tmp_path / "p" / "labels.json").read_text())["provenance"]["settings"]
    assert settings["split_by"] == "utterance" and settings["silence"] == ["<x>", "breath"]
    assert settings["tones"] == [1, 2] and settings["phone_map"] == str(table.resolve())
    result = subprocess.run([sys.executable, "-m", "phonorm.cli", "info", str(tmp_path / "p")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "not speaker-disjoint" in result.stdout


# ----------------------------------------------------------------------------- speakers' tiers, encodings
def _grid(path: Path, tiers: list[tuple[str, list]], end: float = 0.5) -> Path:
    from praatio import textgrid
    from praatio.data_classes.interval_tier import IntervalTier

    grid = textgrid.Textgrid()
    for name, entries in tiers:
        grid.addTier(IntervalTier(name, entries, 0, end))
    grid.save(str(path), format="long_textgrid", includeBlankSpaces=True)
    return path


SPK1 = [("spk1 - words", [(0.1, 0.3, "zhong1")]), ("spk1 - phones", [(0.1, 0.16, "zh"), (0.16, 0.3, "ong1")])]
SPK2 = [("spk2 - words", [(0.3, 0.5, "guo2")]), ("spk2 - phones", [(0.3, 0.35, "g"), (0.35, 0.5, "uo2")])]


def test_several_speakers_tiers_are_refused_not_reduced_to_the_first(tmp_path):
    from phonorm.corpus.textgrid import read_textgrid

    two = _grid(tmp_path / "two.TextGrid", SPK1 + SPK2)
    with pytest.raises(InputError, match=r"2 phone tiers \('spk1 - phones', 'spk2 - phones'\): several speakers"):
        read_textgrid(two)
    # two tiers both named `phones` (praatio renames the second `phones_2`)
    same = tmp_path / "same.TextGrid"
    same.write_text(two.read_text(encoding="utf-8").replace("spk1 - ", "").replace("spk2 - ", ""), encoding="utf-8")
    with pytest.raises(InputError, match=r"2 phone tiers \('phones', 'phones_2'\)"):
        read_textgrid(same)
    # one speaker's MFA tiers are read, with that speaker's words
    one = read_textgrid(_grid(tmp_path / "one.TextGrid", SPK2 + [("notes", [(0.0, 0.5, "x")])]))
    assert [iv.label for iv in one.phones if iv.label] == ["g", "uo2"]
    assert [iv.label for iv in one.words if iv.label] == ["guo2"]
    # in `prepare`, the file's utterance is named and skippable like any bad alignment
    write_wav(tmp_path / "wav" / "spk1_001.wav", 0.5)
    write_wav(tmp_path / "wav" / "spk1_002.wav", 0.5)
    (tmp_path / "tg").mkdir()
    _grid(tmp_path / "tg" / "spk1_001.TextGrid", SPK1 + SPK2)
    _grid(tmp_path / "tg" / "spk1_002.TextGrid", SPK1)
    (tmp_path / "spk.tsv").write_text("spk1\tF\n")
    corpus = dict(audio=tmp_path / "wav", speakers=tmp_path / "spk.tsv")
    with pytest.raises(InputError, match="several speakers") as err:
        _prepare(tmp_path / "p", corpus, tmp_path / "tg", split_by="utterance", dev=0, test=0)
    assert err.value.item == "spk1_001"
    report = _prepare(tmp_path / "p", corpus, tmp_path / "tg", split_by="utterance", dev=0, test=0, skip_bad=True)
    assert "skipped 1" in report and _segments(tmp_path / "p")["utterance_id"].unique().tolist() == ["spk1_002"]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-8-sig"])
def test_textgrids_in_utf16_with_or_without_bom(encoding, tmp_path):
    from phonorm.corpus.textgrid import read_textgrid

    text = _grid(tmp_path / "utf8.TextGrid", SPK1).read_text(encoding="utf-8")
    path = tmp_path / "x.TextGrid"
    path.write_bytes(text.encode(encoding))  # utf-16: with a BOM; -le / -be: without one
    alignment = read_textgrid(path)
    assert [iv.label for iv in alignment.phones if iv.label] == ["zh", "ong1"]


def test_a_time_before_zero_is_named_with_its_line(tmp_path):
    """praatio reads `xmin = -0.5` as 0.5 and then blames an interval's end; the reader names the negative
    time and its line instead."""
    from phonorm.corpus.textgrid import read_textgrid

    text = _grid(tmp_path / "ok.TextGrid", SPK1).read_text(encoding="utf-8")
    first = text.index("xmin = 0")
    bad = tmp_path / "bad.TextGrid"
    bad.write_text(text[:first] + "xmin = -0.5" + text[first + len("xmin = 0"):], encoding="utf-8")
    line = text.count("\n", 0, first) + 1
    with pytest.raises(InputError, match=rf"bad\.TextGrid: a time before 0 s: xmin = -0\.5 \(line {line}\)"):
        read_textgrid(bad)
