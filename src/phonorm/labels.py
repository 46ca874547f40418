"""The vocabulary of labels that several stages share, declared once (a bottom-layer module: the corpus,
the analysis, the figures and the records import it; it imports nothing of phonorm).

- `SEXES`: the speaker-sex codes a corpus holds (speakers.tsv, frames, the sex task's classes).
- `CLASSIC_MODEL`: the model name under which the classic baselines (F0, MFCC) appear in probes.csv
  and normalization.csv (their "layer" is the feature's name), so no model may be called so.
- `ERASURE_CONDITIONS`: what concept erasure removes before the probes are trained again (nothing,
  sex, tone), and `ERASURE_PROBED`, the labels probed after it (analysis/erasure.py, figures.py).
"""

from __future__ import annotations

SEXES = ("F", "M")
CLASSIC_MODEL = "classic"
ERASURE_CONDITIONS = ("none", "sex", "tone")
ERASURE_PROBED = ("tone", "sex")
