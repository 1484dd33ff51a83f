"""What every layer agrees on about an ECG: the 12 standard leads in the corpus's order, and resampling.

Kept free of torch and wfdb, so that anything (the demo simulator, the gate, a stage's start-up) can use it
without their import cost.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

LEADS_12 = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")


def resample(signal: np.ndarray, from_rate: float, to_rate: float) -> np.ndarray:
    """Resample along the last axis with a polyphase filter (exact rational factor, anti-aliased).

    scipy.signal is imported here, not with the module: it costs ~1.5 s of start-up, and most processes that
    need the lead names never resample.
    """
    if from_rate == to_rate:
        return signal
    from scipy.signal import resample_poly

    ratio = Fraction(to_rate / from_rate).limit_denominator(1000)
    return resample_poly(signal, ratio.numerator, ratio.denominator, axis=-1).astype(np.float32)
