from phonorm.wording import counted, speech


def test_counts_take_the_number_of_their_noun():
    assert counted(1, "speaker") == "1 speaker" and counted(0, "speaker") == "0 speakers"
    assert counted(3, "speaker") == "3 speakers" and counted(2, "analysis", "analyses") == "2 analyses"


def test_small_amounts_of_speech_are_not_zero_hours():
    assert speech(0.004) == "0.2 min" and speech(0.5) == "30.0 min" and speech(2.5) == "2.50 h"
