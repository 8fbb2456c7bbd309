"""Synthetic distribution shifts: corrupted images and faulty sensors, made from in-distribution data.

Each shift takes samples ``x`` (N, ...) with channels last and returns a shifted copy. Strengths are
relative to the data's own per-channel statistics, so the same shift means the same thing on any
data set. Used by the demo, the benchmarks and the simulator's ``--drift``.
"""

from __future__ import annotations

import numpy as np

from edgefp.errors import EdgefpError


def _channel_stats(x: np.ndarray):
    axes = tuple(range(x.ndim - 1))
    return x.mean(axis=axes), x.std(axis=axes) + 1e-6, x.min(axis=axes), x.max(axis=axes)


def gaussian(x, rng):
    """Pure Gaussian noise with the data's per-channel mean and std (nothing of the signal is left)."""
    mean, std, _, _ = _channel_stats(x)
    return (mean + std * rng.standard_normal(x.shape)).astype(np.float32)


def noise(x, rng):
    """The signal plus Gaussian noise as strong as the signal (per-channel std)."""
    _, std, _, _ = _channel_stats(x)
    return (x + std * rng.standard_normal(x.shape)).astype(np.float32)


def invert(x, rng):
    """Values mirrored inside each channel's range (a negative image, a sensor mounted upside down)."""
    _, _, low, high = _channel_stats(x)
    return (low + high - x).astype(np.float32)


def gain(x, rng):
    """Every value three times larger (a miscalibrated amplifier)."""
    return (3.0 * x).astype(np.float32)


def blur(x, rng):
    """A 3-wide box blur along every spatial or time axis."""
    if x.ndim < 3:
        raise EdgefpError("the 'blur' shift needs images or sequences, not flat vectors")
    out = x.astype(np.float32)
    for axis in range(1, x.ndim - 1):
        pad = [(0, 0)] * x.ndim
        pad[axis] = (1, 1)
        padded = np.pad(out, pad, mode="edge")
        n = out.shape[axis]
        out = sum(np.take(padded, range(k, k + n), axis=axis) for k in range(3)) / 3.0
    return out.astype(np.float32)


def stuck(x, rng):
    """Stuck hardware: a block of image pixels at full scale, or one sensor axis frozen at one value."""
    out = x.astype(np.float32).copy()
    _, _, _, high = _channel_stats(x)
    if x.ndim == 4:
        h, w = x.shape[1] // 3 + 1, x.shape[2] // 3 + 1
        for i in range(len(out)):
            r, c = rng.integers(0, x.shape[1] - h + 1), rng.integers(0, x.shape[2] - w + 1)
            out[i, r : r + h, c : c + w, :] = high
    elif x.ndim == 3:
        for i in range(len(out)):
            channel, t = rng.integers(0, x.shape[2]), rng.integers(0, x.shape[1])
            out[i, :, channel] = out[i, t, channel]
    else:
        for i in range(len(out)):
            feature = rng.integers(0, x.shape[1], size=max(1, x.shape[1] // 8))
            out[i, feature] = high[feature]
    return out


def reverse(x, rng):
    """Time-reversed windows (or mirrored images): the first axis after N runs backwards."""
    if x.ndim < 3:
        raise EdgefpError("the 'reverse' shift needs images or sequences, not flat vectors")
    return np.ascontiguousarray(x[:, ::-1]).astype(np.float32)


SHIFTS = {f.__name__: f for f in (gaussian, noise, invert, gain, blur, stuck, reverse)}


RANGE_SAMPLES = 500  # at most this many calibration samples set int8 ranges
RANGE_NOISY = 100  # and this many noisy copies of them (repeated when fewer): as far a reach for any count


def calibration_sample(calib: np.ndarray, seed: int = 0) -> np.ndarray:
    """Up to RANGE_SAMPLES of ``calib``, drawn by ``seed``: the in-distribution part of :func:`range_samples`."""
    return np.asarray(calib, dtype=np.float32)[np.random.default_rng(seed).permutation(len(calib))[:RANGE_SAMPLES]]


def range_samples(calib: np.ndarray, seed: int = 0) -> np.ndarray:
    """The samples that set a bundle's int8 ranges: :func:`calibration_sample` plus RANGE_NOISY noisy copies of
    them, so that inputs unlike the calibration data (faults) do not saturate the classifier's tensors
    before the fingerprint sees them. As many copies for a few samples as for many: with copies of a fifth
    of them, 60 samples of 4 standardised values reached 3.1 std, with 100 copies 4.4."""
    sample = calibration_sample(calib, seed)
    noisy = apply(np.resize(sample, (RANGE_NOISY, *sample.shape[1:])), "noise", seed)
    return np.concatenate([sample, noisy]).astype(np.float32)


def apply(x: np.ndarray, kind: str, seed: int = 0) -> np.ndarray:
    """Return ``x`` shifted by the named kind (one of SHIFTS)."""
    if kind not in SHIFTS:
        raise EdgefpError(f"unknown shift '{kind}'; choose one of {', '.join(SHIFTS)}")
    return SHIFTS[kind](np.asarray(x, dtype=np.float32), np.random.default_rng(seed))
