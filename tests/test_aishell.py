"""phonorm prepare-aishell on a small tree in AISHELL-1's exact layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from corpus_inputs import write_textgrid, write_wav
from phonorm.corpus.aishell import prepare_aishell, speaker_id
from phonorm.corpus.store import PreparedCorpus
from phonorm.errors import InputError, PhonormError
from phonorm.lock import folder_lock

SPEAKERS = {"S0002": ("F", "train"), "S0003": ("M", "train"), "S0724": ("F", "dev"), "S0764": ("M", "test")}
# word → lexicon pronunciation (initials + tonal finals, citation tones)
LEXICON = {"你好": "n i3 h ao3", "中国": "zh ong1 g uo2", "一": "ii i1", "百": "b ai3"}
SENTENCES = [["你好", "中国"], ["一", "百"]]


def build_aishell(root: Path) -> dict:
    """The AISHELL-1 layout with two utterances per speaker, plus TextGrids and a CTM of them."""
    transcript, ctm, plan = [], [], {}
    for spk, (_, split) in SPEAKERS.items():
        for k, words in enumerate(SENTENCES):
            utt = f"BAC009{spk}W{k + 121:04d}"
            t, word_tiers, phone_tiers = 0.2, [], []
            for word in words:
                start = t
                for phone in LEXICON[word].split():
                    d = 0.18 if phone[-1].isdigit() else 0.06
                    phone_tiers.append((round(t, 3), round(t + d, 3), phone))
                    ctm.append(f"{utt} 1 {t:.3f} {d:.3f} {phone}")
                    t += d
                word_tiers.append((round(start, 3), round(t, 3), word))
            end = round(t + 0.2, 3)
            write_wav(root / "data_aishell" / "wav" / split / spk / f"{utt}.wav", end, rate=16_000)
            write_textgrid(root / "mfa" / spk / f"{utt}.TextGrid", word_tiers, phone_tiers, end)
            transcript.append(f"{utt} {' '.join(words)}")
            plan[utt] = dict(speaker=spk, words=words)
    (root / "data_aishell" / "transcript").mkdir(parents=True)
    (root / "data_aishell" / "transcript" / "aishell_transcript_v0.8.txt").write_text("\n".join(transcript) + "\n")
    (root / "resource_aishell").mkdir()
    (root / "resource_aishell" / "lexicon.txt").write_text("SIL sil\n" + "".join(f"{w} {p}\n" for w, p in LEXICON.items()))
    info = "".join(f"{spk[1:]} {sex}\n" for spk, (sex, _) in SPEAKERS.items()) + "0900 M\n"
    (root / "resource_aishell" / "speaker.info").write_text(info)
    (root / "ctm").mkdir()
    (root / "ctm" / "phones.ctm").write_text("\n".join(ctm) + "\n")
    return plan


@pytest.fixture(scope="module")
def aishell(tmp_path_factory):
    root = tmp_path_factory.mktemp("aishell")
    return root, build_aishell(root)


def test_split_and_sex_come_from_the_corpus(aishell, tmp_path):
    root, plan = aishell
    report = prepare_aishell(tmp_path / "p", root=root, alignments=root / "mfa")
    utts = PreparedCorpus(tmp_path / "p").all_utterances
    assert len(utts) == len(plan) and "8 utterances" in report
    for row in utts.itertuples():
        sex, split = SPEAKERS[row.speaker]
        assert (row.sex, row.split) == (sex, split)
        assert plan[row.utterance_id]["speaker"] == row.speaker
    # the speaker is the wav folder's name (the utterance id only contains it)
    assert PreparedCorpus(tmp_path / "p").labels.speakers.model_dump() == {"rule": "folder", "matched": {"folder": len(plan)}}


def test_a_second_writer_is_refused(aishell, tmp_path):
    root, _ = aishell
    with folder_lock(tmp_path / "p", "phonorm prepare-aishell"):
        with pytest.raises(PhonormError, match="already being written by phonorm prepare-aishell"):
            prepare_aishell(tmp_path / "p", root=root, alignments=root / "mfa")
    assert not (tmp_path / "p" / "labels.json").exists()


def test_speaker_info_in_utf16(aishell, tmp_path):
    from phonorm.corpus.aishell import read_speaker_info

    root, _ = aishell
    text = (root / "resource_aishell" / "speaker.info").read_text(encoding="utf-8")
    (tmp_path / "speaker.info").write_text(text, encoding="utf-16")
    utf8 = read_speaker_info(root / "resource_aishell" / "speaker.info").sex
    assert read_speaker_info(tmp_path / "speaker.info").sex == utf8 and set(SPEAKERS) <= set(utf8)


@pytest.mark.parametrize("fmt", ["textgrid", "ctm"])
def test_tones_surface_and_citation(aishell, tmp_path, fmt):
    root, _ = aishell
    alignments = root / ("mfa" if fmt == "textgrid" else "ctm")
    prepare_aishell(tmp_path / "s", root=root, alignments=alignments, fmt=fmt, tone_mode="surface")
    prepare_aishell(tmp_path / "c", root=root, alignments=alignments, fmt=fmt, tone_mode="citation")
    surface = PreparedCorpus(tmp_path / "s").segments_of("BAC009S0002W0121")
    citation = PreparedCorpus(tmp_path / "c").segments_of("BAC009S0002W0121")
    assert surface["phone"].tolist() == ["n", "i", "h", "ao", "zh", "ong", "g", "uo"]
    assert surface["word"].tolist() == ["你好"] * 4 + ["中国"] * 4  # CTM: words from transcript + lexicon
    assert citation["tone"].tolist() == [0, 3, 0, 3, 0, 1, 0, 2]
    assert surface["tone"].tolist() == [0, 2, 0, 3, 0, 1, 0, 2]  # 你好: third-tone sandhi
    assert surface["syllable"].tolist() == ["ni2", "ni2", "hao3", "hao3", "zhong1", "zhong1", "guo2", "guo2"]
    yi = PreparedCorpus(tmp_path / "c").segments_of("BAC009S0002W0122")
    assert yi["phone"].tolist() == ["ii", "i", "b", "ai"]  # the AISHELL zero-initial placeholder is a phone
    # pypinyin reads 一百 from its phrase dictionary as yi4 bai3 (the tone change of 一 is lexical)
    assert yi["syllable"].tolist() == ["yi4", "yi4", "bai3", "bai3"] and yi["tone"].tolist() == [0, 4, 0, 3]


def test_missing_parts_and_skips(aishell, tmp_path):
    root, _ = aishell
    (tmp_path / "bare" / "data_aishell" / "wav").mkdir(parents=True)
    with pytest.raises(InputError, match="speaker.info"):
        prepare_aishell(tmp_path / "p", root=tmp_path / "bare", alignments=root / "mfa")
    # an extra recording without alignment: an error, or skipped and listed
    extra = root / "data_aishell" / "wav" / "test" / "S0764" / "BAC009S0764W0999.wav"
    write_wav(extra, 0.5)
    try:
        with pytest.raises(InputError, match="no alignment") as err:
            prepare_aishell(tmp_path / "p", root=root, alignments=root / "mfa")
        assert err.value.item == "BAC009S0764W0999"
        report = prepare_aishell(tmp_path / "p", root=root, alignments=root / "mfa", skip_bad=True)
        assert "skipped 1" in report
        assert "BAC009S0764W0999" in (tmp_path / "p" / "skipped.tsv").read_text()
    finally:
        extra.unlink()


def test_speaker_ids():
    assert [speaker_id(s) for s in ("0002", "2", "S0002", "s0724")] == ["S0002", "S0002", "S0002", "S0724"]
