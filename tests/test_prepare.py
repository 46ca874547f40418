"""phonorm prepare: hand-made corpora in, the prepared-corpus contract out; bad input named."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from corpus_inputs import SIX_SPEAKERS, ctm_text, make_corpus, write_textgrid, write_wav
from phonorm.corpus.info import corpus_info, format_info
from phonorm.corpus.prepare import prepare_corpus
from phonorm.corpus.schemes import MandarinScheme, PlainScheme, SchemeError, contour_tone, pinyin_syllable
from phonorm.corpus.speakers import SpeakerMismatch, read_speakers
from phonorm.corpus.split import read_split_file, speaker_split
from phonorm.corpus.store import PreparedCorpus
from phonorm.errors import InputError, PhonormError


def run(out, corpus, **options):
    options.setdefault("fmt", "textgrid")
    options.setdefault("scheme", "mandarin")
    options.setdefault("tone_mode", "surface")
    options.setdefault("split_file", None)
    options.setdefault("skip_bad", False)
    options.setdefault("seed", 0)
    return prepare_corpus(out, audio_dir=corpus["audio"], alignments=corpus.get("ctm", corpus["alignments"]),
                          speakers_file=corpus["speakers"], **options)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"), SIX_SPEAKERS, n_utts=2, rates=(16_000, 22_050, 44_100))


def test_prepare_writes_the_contract(corpus, tmp_path):
    report = run(tmp_path / "p", corpus)
    prepared = PreparedCorpus(tmp_path / "p")
    utts = prepared.all_utterances
    assert len(utts) == 12 and "12 utterances" in report
    assert set(utts["speaker"]) == set(SIX_SPEAKERS)
    assert dict(zip(utts["speaker"], utts["sex"])) == SIX_SPEAKERS
    assert utts["utterance_id"].is_unique
    for row in utts.itertuples():
        info = corpus["plan"][row.utterance_id]
        assert Path(row.audio_path).is_absolute() and Path(row.audio_path) == info["wav"].resolve()
        assert row.duration == pytest.approx(info["end"], abs=1e-3)
    assert set(utts["sample_rate"]) == {16_000, 22_050, 44_100}
    # speaker-disjoint split, 3 F and 3 M: one of each sex in every split
    assert (utts.groupby("speaker")["split"].nunique() == 1).all()
    per_split = utts.drop_duplicates("speaker").groupby("split")["sex"].apply(sorted).to_dict()
    assert per_split == {"train": ["F", "M"], "dev": ["F", "M"], "test": ["F", "M"]}

    segs = prepared.segments
    assert segs["segment_id"].is_unique and segs["tone"].dtype == "int8"
    for utt, info in corpus["plan"].items():
        rows = prepared.segments_of(utt)
        assert rows["start"].tolist() == pytest.approx([s for s, _, _ in info["phones"]])
        assert rows["end"].tolist() == pytest.approx([e for _, e, _ in info["phones"]])
        expected_phones = [p.rstrip("12345") for _, _, p in info["phones"]]
        assert rows["phone"].tolist() == expected_phones
        expected_tones = [int(p[-1]) if p[-1].isdigit() else 0 for _, _, p in info["phones"]]
        assert rows["tone"].tolist() == expected_tones
        assert rows["is_final"].tolist() == [t > 0 for t in expected_tones]
        words = {(s, e): w for s, e, w in info["words"]}
        for r in rows.itertuples():
            word = next(w for (s, e), w in words.items() if s <= r.start < e)
            assert r.word == word and r.syllable == word
    assert prepared.label_maps["tone"] == ["1", "2", "3", "4", "5"]
    assert prepared.label_maps["phone"] == sorted(set(segs["phone"]))
    assert prepared.label_maps["sex"] == ["F", "M"]
    assert prepared.labels.provenance["settings"]["scheme"] == "mandarin"
    assert not (tmp_path / "p" / "skipped.tsv").exists()


def test_ctm_gives_the_same_segments(corpus, tmp_path):
    run(tmp_path / "tg", corpus)
    ctm_dir = tmp_path / "ctm"
    ctm_dir.mkdir()
    plan = list(corpus["plan"].items())
    # two files in a folder, one with Kaldi position suffixes
    (ctm_dir / "a.ctm").write_text(ctm_text(dict(plan[:5]), suffixes=True))
    (ctm_dir / "b.ctm").write_text(";; comment\n" + ctm_text(dict(plan[5:])))
    run(tmp_path / "ctm_out", {**corpus, "ctm": ctm_dir}, fmt="ctm")
    tg, ctm = PreparedCorpus(tmp_path / "tg"), PreparedCorpus(tmp_path / "ctm_out")
    columns = ["utterance_id", "start", "end", "phone", "tone", "is_final", "syllable"]
    pd.testing.assert_frame_equal(tg.segments[columns], ctm.segments[columns], check_exact=False, atol=1e-6)
    assert (ctm.segments["word"] == "").all()  # CTM has no words
    assert tg.all_utterances.equals(ctm.all_utterances)


def test_nested_audio_and_plain_scheme(tmp_path):
    speakers = {"anna": "F", "bob": "M"}
    corpus = make_corpus(tmp_path / "c", speakers, n_utts=2, nested=True)
    # SPK/UTT.wav layout; test_speaker_from_folder_when_ids_do_not_share_a_prefix shows the folder decides
    run(tmp_path / "p", corpus, scheme="plain")
    prepared = PreparedCorpus(tmp_path / "p")
    assert dict(zip(prepared.all_utterances["utterance_id"].str[:3], prepared.all_utterances["speaker"])) == {"ann": "anna", "bob": "bob"}
    assert (prepared.segments["tone"] == 0).all() and not prepared.segments["is_final"].any()
    assert "ong1" in set(prepared.segments["phone"])  # labels kept as given
    assert prepared.label_maps["tone"] == []


def test_speaker_from_folder_when_ids_do_not_share_a_prefix(tmp_path):
    (tmp_path / "speakers.tsv").write_text("S1\tF\nS2\tM\n")  # no header
    for spk in ("S1", "S2"):
        words, phones, end = [(0.1, 0.32, "zhong1")], [(0.1, 0.16, "zh"), (0.16, 0.32, "ong1")], 0.42
        write_wav(tmp_path / "wav" / spk / f"utt_{spk}.wav", end)
        write_textgrid(tmp_path / "tg" / f"utt_{spk}.TextGrid", words, phones, end)
    prepare_corpus(tmp_path / "p", audio_dir=tmp_path / "wav", alignments=tmp_path / "tg",
                   speakers_file=tmp_path / "speakers.tsv")
    utts = PreparedCorpus(tmp_path / "p").all_utterances
    assert dict(zip(utts["utterance_id"], utts["speaker"])) == {"utt_S1": "S1", "utt_S2": "S2"}


def test_mfa_ipa_phones_with_character_words_and_tone_modes(tmp_path):
    # 你好 (ni3 hao3): surface tone (third-tone sandhi) makes 你 tone 2. MFA phones: n i˨˩˦ x au˨˩˦
    words = [(0.1, 0.6, "你好"), (0.6, 0.9, "")]
    phones = [(0.1, 0.15, "n"), (0.15, 0.35, "i˨˩˦"), (0.35, 0.42, "x"), (0.42, 0.6, "au˨˩˦"), (0.6, 0.65, "spn"),
              (0.65, 0.75, "m"), (0.75, 0.9, "a")]
    write_wav(tmp_path / "wav" / "u1.wav", 1.0)
    write_textgrid(tmp_path / "tg" / "u1.TextGrid", words, phones, 1.0)
    (tmp_path / "spk.tsv").write_text("speaker\tsex\nu\tM\n")
    args = dict(audio_dir=tmp_path / "wav", alignments=tmp_path / "tg", speakers_file=tmp_path / "spk.tsv",
                speaker_from="prefix")  # speaker "u", utterance "u1": no separator
    prepare_corpus(tmp_path / "surface", tone_mode="surface", **args)
    prepare_corpus(tmp_path / "citation", tone_mode="citation", **args)
    surface = PreparedCorpus(tmp_path / "surface").segments
    citation = PreparedCorpus(tmp_path / "citation").segments
    assert surface["phone"].tolist() == ["n", "i", "x", "au", "m", "a"]
    assert surface["tone"].tolist() == [0, 2, 0, 3, 0, 5]  # the toneless vowel outside words: neutral
    assert citation["tone"].tolist() == [0, 3, 0, 3, 0, 5]
    assert surface["syllable"].tolist()[:4] == ["ni2", "ni2", "hao3", "hao3"]
    assert citation["syllable"].tolist()[:4] == ["ni3", "ni3", "hao3", "hao3"]
    assert (surface["word"].tolist()[:4]) == ["你好"] * 4


@pytest.mark.parametrize("label, expected", [
    ("zh", ("zh", 0, False)), ("ong1", ("ong", 1, True)), ("ü3", ("v", 3, True)), ("e0", ("e", 5, True)),
    ("a", ("a", 5, True)), ("ii", ("ii", 0, False)), ("n2", ("n", 2, True)),
    ("ʈʂ", ("ʈʂ", 0, False)), ("u˥˥", ("u", 1, True)), ("o˧˥", ("o", 2, True)), ("a˨˩˦", ("a", 3, True)),
    ("a˨˩", ("a", 3, True)), ("ei˥˩", ("ei", 4, True)), ("ə˧", ("ə", 5, True)), ("ʐ̩˥˩", ("ʐ̩", 4, True)),
    ("ŋ", ("ŋ", 0, False)), ("tɕʰ", ("tɕʰ", 0, False)), ("au", ("au", 5, True)),
])
def test_mandarin_scheme_parses(label, expected):
    parsed = MandarinScheme().parse(label)
    assert (parsed.phone, parsed.tone, parsed.is_final) == expected


@pytest.mark.parametrize("label", ["zh1", "q9", "xyz", "ong7", "˥˥", "ŋ˥˩", "a b", "", "123", "中"])
def test_mandarin_scheme_rejects(label):
    with pytest.raises(SchemeError):
        MandarinScheme().parse(label)


def test_contours_syllables_and_plain_scheme():
    assert [contour_tone(c) for c in ("˥˥", "˧˥", "˨˩˦", "˨˩", "˥˩", "˧", "˥", "˩˩")] == [1, 2, 3, 3, 4, 5, 1, 3]
    cases = {("zh", "ong", 1): "zhong1", ("", "iang", 2): "yang2", ("", "i", 1): "yi1", ("", "u", 3): "wu3",
             ("", "uei", 4): "wei4", ("j", "v", 3): "ju3", ("l", "v", 4): "lv4", ("", "van", 2): "yuan2",
             ("q", "iou", 1): "qiu1", ("ii", "in", 1): "yin1", ("", "er", 2): "er2"}
    assert {k: pinyin_syllable(*k) for k in cases} == cases
    assert PlainScheme().parse(" θ ").phone == "θ"
    with pytest.raises(SchemeError):
        PlainScheme().parse("  ")


def test_default_split_is_balanced_and_deterministic():
    sex_of = {f"F{i:02d}": "F" for i in range(10)} | {f"M{i:02d}": "M" for i in range(10)}
    split = speaker_split(sex_of, seed=1)
    assert split == speaker_split(dict(reversed(list(sex_of.items()))), seed=1)
    for sex in "FM":
        counts = pd.Series([s for spk, s in split.items() if spk[0] == sex]).value_counts().to_dict()
        assert counts == {"train": 8, "dev": 1, "test": 1}
    assert any(speaker_split(sex_of, seed=s) != split for s in range(2, 6))
    tiny = speaker_split({"a": "F", "b": "F", "c": "M"}, seed=0)
    assert sorted(tiny.values()) == ["test", "train", "train"] and tiny["c"] == "train"
    four_each = speaker_split({f"F{i}": "F" for i in range(4)} | {f"M{i}": "M" for i in range(4)}, seed=3)
    assert pd.Series(four_each).value_counts().to_dict() == {"train": 4, "dev": 2, "test": 2}
    # a share of exactly 0 is none: --test 0 leaves no test speaker (it kept one per sex before)
    no_test = speaker_split(sex_of, seed=1, dev=0.1, test=0.0)
    assert set(no_test.values()) == {"train", "dev"} and list(no_test.values()).count("dev") == 2
    assert set(speaker_split(sex_of, seed=1, dev=0.0, test=0.0).values()) == {"train"}
    assert set(speaker_split({"a": "F", "b": "F"}, seed=0, test=0.0).values()) == {"train"}


def test_split_file(corpus, tmp_path):
    utts = sorted(corpus["plan"])
    split_file = tmp_path / "split.tsv"
    split_file.write_text("utterance\tsplit\n" + "".join(f"{u}\t{['train', 'dev', 'test'][i % 3]}\n" for i, u in enumerate(utts[:-1])))
    with pytest.raises(InputError, match="no split") as err:
        run(tmp_path / "p", corpus, split_file=split_file)
    assert err.value.item == utts[-1]
    report = run(tmp_path / "p", corpus, split_file=split_file, skip_bad=True)
    got = PreparedCorpus(tmp_path / "p").all_utterances
    assert dict(zip(got["utterance_id"], got["split"])) == {u: ["train", "dev", "test"][i % 3] for i, u in enumerate(utts[:-1])}
    assert "more than one split" in report and "skipped 1" in report
    (tmp_path / "bad.tsv").write_text("u1\tvalidation\n")
    with pytest.raises(InputError, match="validation"):
        read_split_file(tmp_path / "bad.tsv")


def test_speakers_table(tmp_path):
    path = tmp_path / "s.tsv"
    path.write_text("speaker\tsex\nA\tf\nB\tM\nC\tX\nD\tF\nD\tM\n")
    table = read_speakers(path)
    assert table.sex == {"A": "F", "B": "M"}
    assert set(table.problems) == {"C", "D"}
    assert table.speaker_of("A_001") == "A"
    path.write_text("A\tF\nAB\tM\n")
    assert read_speakers(path).speaker_of("AB_001") == "AB"  # "A" is not followed by a separator
    path.write_text("")
    with pytest.raises(InputError, match="no rows"):
        read_speakers(path)


def test_speakers_tables_in_utf16(tmp_path):
    text = "speaker\tsex\nF01\tF\nM01\tM\n"
    for encoding in ("utf-16", "utf-16-le", "utf-16-be", "utf-8-sig"):  # utf-16: with BOM; -le/-be: without
        path = tmp_path / f"{encoding}.tsv"
        path.write_bytes(text.encode(encoding))
        assert read_speakers(path).sex == {"F01": "F", "M01": "M"}, encoding
    path.write_bytes(b"speaker\tsex\n\xff\xfeF01\tF\n")
    with pytest.raises(InputError, match="not valid UTF-8"):
        read_speakers(path)


@pytest.mark.parametrize("rule, table, utterance, folder, expected", [
    # a speaker id that only starts another id is no match: F0 is not F01 (was: F0, silently)
    ("auto", ["F0", "M01"], "F01_0001", None, "'F0' starts it but is not followed by a separator"),
    ("auto", ["S1", "S2"], "S10_001", None, "'S1' starts it but is not followed by a separator"),
    ("auto", ["F0", "F01"], "F01_0001", None, "F01"),
    ("auto", ["F01"], "F01-0001", None, "F01"),
    ("auto", ["F01"], "F01", None, "F01"),
    ("auto", ["A", "A_b"], "A_b_001", None, "ambiguous: speakers 'A', 'A_b'"),
    ("auto", ["S1", "anna"], "S1_001", "anna", "anna"),  # the folder decides when it is a speaker
    ("folder", ["F01"], "F01_0001", None, "not in a speaker folder"),
    ("folder", ["F01"], "F01_0001", "wav", "its folder 'wav' is not a speaker"),
    ("folder", ["F01"], "x", "F01", "F01"),
    ("prefix", ["SSB0005"], "SSB00050001", None, "SSB0005"),
    ("prefix", ["F0", "F01"], "F01_0001", None, "ambiguous: speakers 'F0', 'F01'"),
    ("prefix", ["F01"], "M01_0001", None, "no speaker id of the table starts"),
    (r"regex:BAC009(S\d{4})", ["S0002"], "BAC009S0002W0122", None, "S0002"),
    (r"regex:(?P<speaker>S\d+)", ["S0002"], "BAC009S0002W0122", None, "does not match"),
    (r"regex:.*?(S\d{4})", ["S0003"], "BAC009S0002W0122", None, "gives speaker 'S0002', not in the table"),
])
def test_speaker_rules_match_exactly(rule, table, utterance, folder, expected, tmp_path):
    path = tmp_path / "s.tsv"
    path.write_text("".join(f"{spk}\tF\n" for spk in table))
    speakers = read_speakers(path)
    speakers.rule = rule
    if expected in table:
        assert speakers.speaker_of(utterance, folder) == expected
    else:
        with pytest.raises(SpeakerMismatch) as err:
            speakers.speaker_of(utterance, folder)
        assert expected in str(err.value)


def test_prefix_mislabel_is_refused_and_the_rule_is_recorded(tmp_path, capsys):
    # F01's utterances with a table that has F0 (M) but no F01: no longer silently speaker F0, sex M
    corpus = make_corpus(tmp_path / "c", {"F01": "F", "M01": "M"}, n_utts=2)
    (tmp_path / "c" / "speakers.tsv").write_text("speaker\tsex\nF0\tM\nM01\tM\n")
    with pytest.raises(InputError, match="'F0' starts it but is not followed by a separator") as err:
        run(tmp_path / "p", corpus)
    assert err.value.item == "F01_000" and err.value.path.endswith("speakers.tsv")
    report = run(tmp_path / "p", corpus, skip_bad=True, split_by="utterance")
    assert "skipped 2" in report and set(PreparedCorpus(tmp_path / "p").all_utterances["speaker"]) == {"M01"}
    # the rule and how each utterance matched are in labels.json and `phonorm info`
    (tmp_path / "c" / "speakers.tsv").write_text("speaker\tsex\nF01\tF\nM01\tM\n")
    run(tmp_path / "q", corpus, split_by="utterance")
    assert PreparedCorpus(tmp_path / "q").labels.speakers.model_dump() == {"rule": "auto", "matched": {"prefix": 4}}
    info = format_info(corpus_info(tmp_path / "q"))
    assert "speakers by auto rule: id prefix 4 utterances" in info
    with pytest.raises(PhonormError, match="--speaker-from"):
        run(tmp_path / "r", corpus, speaker_from="regex:no-group")


# --------------------------------------------------------------------------- bad input
def _break(kind: str, root: Path, plan: dict) -> tuple[str, str, str]:
    """Break one utterance; returns (item, file name expected in the error, words of the problem)."""
    utt = sorted(plan)[1]
    info = plan[utt]
    wav = root / "wav" / f"{utt}.wav"
    grid = root / "textgrid" / f"{utt}.TextGrid"
    if kind == "unreadable audio":
        wav.write_bytes(b"RIFF\x00\x00garbage" * 10)
        return utt, wav.name, "unreadable audio"
    if kind == "empty audio":
        write_wav(wav, 0.0)
        return utt, wav.name, "empty audio"
    if kind == "nan audio":  # float WAV: the only kind that can hold NaN
        samples, rate = sf.read(wav, dtype="float32")
        samples[1000:1010] = np.nan
        samples[2000] = np.inf
        sf.write(wav, samples, rate, subtype="FLOAT")
        return utt, wav.name, f"11 NaN or infinite sample(s) in the audio (first at {1000 / rate:.3f} s)"
    if kind == "short audio":  # 20 ms: less than one model frame (25 ms); the alignment still fits it
        write_wav(wav, 0.02)
        write_textgrid(grid, [(0.0, 0.02, "a1")], [(0.0, 0.02, "a1")], 0.02)
        return utt, wav.name, "audio too short: 20.0 ms (320 samples at 16 kHz), shorter than one model frame"
    if kind == "too long":
        write_wav(wav, info["end"] - 0.2)
        return utt, grid.name, "alignment ends at"
    if kind == "no alignment":
        grid.unlink()
        return utt, wav.name, "no alignment"
    if kind == "no audio":
        wav.unlink()
        return utt, grid.name, "without audio"
    if kind == "unknown speaker":
        new = root / "wav" / f"zz{utt}.wav"
        wav.rename(new)
        grid.rename(root / "textgrid" / f"zz{utt}.TextGrid")
        return f"zz{utt}", "speakers.tsv", "no speaker"
    if kind == "bad sex":
        spk = info["speaker"]
        text = (root / "speakers.tsv").read_text().replace(f"{spk}\t{SIX_SPEAKERS[spk]}", f"{spk}\tunknown")
        (root / "speakers.tsv").write_text(text)
        return sorted(u for u in plan if plan[u]["speaker"] == spk)[0], "speakers.tsv", "expected F or M"
    if kind == "bad phone":
        phones = list(info["phones"])
        phones[1] = (phones[1][0], phones[1][1], "q9")
        write_textgrid(grid, info["words"], phones, info["end"])
        return utt, grid.name, "'q9'"
    if kind == "duplicate":
        write_wav(root / "wav" / "again" / f"{utt}.wav", info["end"])
        return utt, f"{utt}.wav", "duplicate utterance id"
    if kind == "broken textgrid":
        grid.write_text('File type = "ooTextFile"\nObject class = "TextGrid"\nxmin = 0\nxmax = oops\n')
        return utt, grid.name, "TextGrid"
    raise AssertionError(kind)


BAD_KINDS = ["unreadable audio", "empty audio", "nan audio", "short audio", "too long", "no alignment", "no audio", "unknown speaker",
             "bad sex", "bad phone", "duplicate", "broken textgrid"]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_input_is_named_and_skippable(kind, tmp_path):
    speakers = dict(list(SIX_SPEAKERS.items())[:2])
    corpus = make_corpus(tmp_path / "c", speakers, n_utts=2)
    item, file_name, words = _break(kind, tmp_path / "c", corpus["plan"])
    with pytest.raises(InputError) as err:
        run(tmp_path / "p", corpus)
    assert err.value.item == item and err.value.path.endswith(file_name) and words in err.value.problem
    assert not (tmp_path / "p" / "labels.json").exists()

    report = run(tmp_path / "p", corpus, skip_bad=True)
    skipped = pd.read_csv(tmp_path / "p" / "skipped.tsv", sep="\t", dtype=str, keep_default_na=False)
    expected_rows = 2 if kind == "bad sex" else 1  # a bad speaker row spoils both of their utterances
    assert list(skipped.columns) == ["item", "file", "problem"] and len(skipped) == expected_rows
    assert item in set(skipped["item"]) and skipped["file"].str.endswith(file_name).all()
    assert f"skipped {expected_rows}" in report and "skipped.tsv" in report
    kept = PreparedCorpus(tmp_path / "p").all_utterances
    assert item not in set(kept["utterance_id"])
    assert len(kept) == len(corpus["plan"]) - expected_rows

    # fixing the input and running again leaves no stale skipped.tsv
    if kind == "no alignment":
        write_textgrid(tmp_path / "c" / "textgrid" / f"{item}.TextGrid", corpus["plan"][item]["words"],
                       corpus["plan"][item]["phones"], corpus["plan"][item]["end"])
        run(tmp_path / "p", corpus, skip_bad=True)
        assert not (tmp_path / "p" / "skipped.tsv").exists()


def test_a_bad_ctm_line_loses_only_its_utterance(corpus, tmp_path):
    lines = ctm_text(corpus["plan"]).splitlines()
    utts = sorted(corpus["plan"])
    bad = next(n for n, line in enumerate(lines) if line.startswith(utts[3]))  # a line of the 4th utterance
    fields = lines[bad].split()
    lines[bad] = " ".join(fields[:2] + ["zero"] + fields[3:])
    ctm = tmp_path / "x.ctm"
    ctm.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=f"line {bad + 1}: start 'zero' .* is not a number") as err:
        run(tmp_path / "p", {**corpus, "ctm": ctm}, fmt="ctm")
    assert err.value.path == str(ctm) and err.value.item == utts[3]
    report = run(tmp_path / "p", {**corpus, "ctm": ctm}, fmt="ctm", skip_bad=True)
    kept = PreparedCorpus(tmp_path / "p").all_utterances["utterance_id"].tolist()
    assert kept == utts[:3] + utts[4:] and "skipped 1: 1 unreadable alignment" in report
    skipped = pd.read_csv(tmp_path / "p" / "skipped.tsv", sep="\t", dtype=str)
    assert skipped["item"].tolist() == [utts[3]] and f"line {bad + 1}" in skipped["problem"][0]
    # a file that is no CTM at all is still one error for the file
    ctm.write_bytes(b"utt 1 0.0 0.1 \xc3\x28\n")
    with pytest.raises(InputError, match="CTM file is not valid"):
        run(tmp_path / "q", {**corpus, "ctm": ctm}, fmt="ctm")


def test_bad_options(corpus, tmp_path):
    with pytest.raises(PhonormError, match="--scheme"):
        run(tmp_path / "p", corpus, scheme="klingon")
    with pytest.raises(InputError, match="no such audio folder"):
        run(tmp_path / "p", {**corpus, "audio": tmp_path / "nowhere"})


def test_cli_prints_one_line_error_and_exit_2(corpus, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "phonorm.cli", "prepare", str(tmp_path / "p"), "--audio", str(corpus["audio"]),
         "--alignments", str(empty), "--speakers", str(corpus["speakers"])],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"phonorm: error: {empty}: no *.TextGrid (or Biaobei *.interval) files in this folder"]


def test_split_shares(corpus, tmp_path):
    # 3 speakers of each sex: test 1/3 and dev 1/3 leave one of each sex in every split
    run(tmp_path / "p", corpus, dev=1 / 3, test=1 / 3)
    got = PreparedCorpus(tmp_path / "p").all_utterances
    speakers = got.drop_duplicates("speaker").groupby(["split", "sex"]).size()
    assert speakers.to_dict() == {(split, sex): 1 for split in ("dev", "test", "train") for sex in ("F", "M")}
    with pytest.raises(PhonormError, match="--dev"):
        run(tmp_path / "q", corpus, dev=0.6, test=0.5)


def test_a_prepared_corpus_is_never_replaced_by_one_of_other_inputs(corpus, tmp_path):
    """Preparing again into the same folder with the same inputs and settings is fine; another seed (so
    other test speakers) is refused before anything is written, naming what differs, and the earlier
    corpus stays as it was."""
    run(tmp_path / "p", corpus)
    before = PreparedCorpus(tmp_path / "p").fingerprint
    run(tmp_path / "p", corpus)
    assert PreparedCorpus(tmp_path / "p").fingerprint == before
    with pytest.raises(PhonormError, match=r"already holds a corpus prepared with other inputs or settings \(seed\)"):
        run(tmp_path / "p", corpus, seed=5)
    assert PreparedCorpus(tmp_path / "p").fingerprint == before
