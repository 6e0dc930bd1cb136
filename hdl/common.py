"""The hardware contract every engine follows.

Streams
    Every engine reads ``i_stream`` and writes ``o_stream`` (an add reads ``i_stream_a`` and
    ``i_stream_b``), each a :class:`amaranth.lib.stream.Signature` carrying **one activation per
    beat**, shaped by the IR's :class:`~zeroskip.ir.Activation` (:func:`activation_shape`), or,
    for a stream of width ``W > 1``, **W consecutive activations** of the stream order as a
    ``data.ArrayLayout(activation_shape, W)`` (:func:`stream_shape`; ``W`` divides the channels
    of a pixel, or the features of a flat tensor, so a beat never spans two pixels). A
    binary activation travels as **one bit**: 1 means +1, 0 means -1 (:func:`encode_beats`,
    :func:`decode_beats` convert; every other width carries its integer as it is). A
    tensor travels in **HWC order**: pixel by pixel, row-major, all channels of a pixel in a row;
    a flat tensor in feature order. Inferences follow each other back to back with no framing
    signal: every engine knows its tensor sizes and counts beats.

Counters
    Every engine has ``counters`` (:data:`COUNTER_NAMES`, each :data:`COUNTER_WIDTH` bits, from
    reset): cycles busy, effective MACs done (products whose weight and activation are both
    nonzero), zero pairs skipped (products of the dense loop nest never issued to a multiplier),
    and stall cycles (work pending but blocked by an empty input or a full output).

Flatten
    The IR's flatten is C-major (torch's), the streams are HWC; a flatten costs no hardware: the
    compiler permutes the columns of the linear layer after it (:func:`hwc_permutation`).
"""

from __future__ import annotations

import numpy as np
from amaranth.hdl import signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import Out

COUNTER_WIDTH = 32
COUNTER_NAMES = ("busy_cycles", "effective_macs", "skipped_pairs", "stall_cycles")
#: Cycles after an inference's last output handshake by which an engine's counters include it:
#: engines register what they count (and sum their lanes' counts) before adding it.
COUNTER_LAG = 3


def activation_shape(act):
    """The Amaranth shape of one activation of encoding ``act`` (a zeroskip.ir.Activation)."""
    if act.binary:
        return unsigned(1)
    return signed(act.bits) if act.signed else unsigned(act.bits)


def stream_shape(act, width=1):
    """The payload of a stream of ``width`` activations of encoding ``act`` per beat: one
    activation's shape, or an array of ``width`` of them."""
    shape = activation_shape(act)
    return shape if width == 1 else data.ArrayLayout(shape, width)


def activation_stream(act, width=1):
    return stream.Signature(stream_shape(act, width))


def check_width(width, size, what):
    """A ValueError unless ``width`` is a power of two dividing ``size`` (``what`` names the
    stream and the size, e.g. "input of 3 channels")."""
    if not isinstance(width, int) or isinstance(width, bool) or width < 1 or \
            width & (width - 1) or size % width:
        raise ValueError(f"the {what} takes a stream width that is a power of two dividing "
                         f"{size}, got {width!r}")
    return width


def counters_signature():
    return wiring.Signature({name: Out(COUNTER_WIDTH) for name in COUNTER_NAMES})


def encode_beats(values, act):
    """Integer activations -> the values their stream carries: for a binary ``act``, -1 / +1 ->
    0 / 1; other encodings unchanged.

    Raises
    ------
    ValueError
        for a binary ``act`` and a value other than -1 or +1.
    """
    values = np.asarray(values)
    if not act.binary:
        return values
    if values.size and not np.all(np.abs(values) == 1):
        raise ValueError("binary activations must be -1 or +1, found "
                         f"{sorted(set(np.unique(values).tolist()) - {-1, 1})[:5]}")
    return (values > 0).astype(np.int64)


def decode_beats(bits, act):
    """Stream values -> integer activations: the inverse of :func:`encode_beats`."""
    bits = np.asarray(bits)
    if not act.binary:
        return bits
    return 2 * bits.astype(np.int64) - 1


def to_beats(x):
    """One tensor (C, H, W) or (F,) -> its beats in stream order (HWC)."""
    x = np.asarray(x)
    return x.transpose(1, 2, 0).reshape(-1) if x.ndim == 3 else x.reshape(-1)


def from_beats(beats, shape):
    """Beats in stream order -> the tensor of ``shape`` (C, H, W) or (F,)."""
    beats = np.asarray(beats)
    if len(shape) == 3:
        channels, height, width = shape
        return beats.reshape(height, width, channels).transpose(2, 0, 1)
    return beats.reshape(shape)


def batch_to_beats(x):
    """A batch (N, ...) -> all its beats, inference after inference."""
    return np.concatenate([to_beats(item) for item in x]) if len(x) else np.zeros(0, np.int64)


def to_wide(elements, width):
    """Activations in stream order -> beats of ``width`` (an ``(N, width)`` array; the values
    themselves for a width of 1)."""
    elements = np.asarray(elements)
    return elements if width == 1 else elements.reshape(-1, width)


def from_wide(beats, width):
    """Beats of ``width`` (as :func:`to_wide` gives them, or lists) -> activations in order."""
    beats = np.asarray(beats)
    return beats if width == 1 else beats.reshape(-1)


def batch_from_beats(beats, shape):
    size = int(np.prod(shape))
    beats = np.asarray(beats)
    if beats.size % size:
        raise ValueError(f"{beats.size} beats are not a whole number of {shape} tensors")
    return np.stack([from_beats(beats[i:i + size], shape) for i in range(0, beats.size, size)]) \
        if beats.size else np.zeros((0, *shape), np.int64)


def hwc_permutation(shape):
    """For a (C, H, W) tensor: ``perm`` with ``to_beats(x) == x.reshape(-1)[perm]``.

    A linear layer after a flatten takes its weight columns as ``weight[:, perm]`` so that it
    can read the HWC stream directly.
    """
    return to_beats(np.arange(int(np.prod(shape))).reshape(shape))


def identifier(name, prefix):
    """``name`` as a Verilog / signature identifier: non-alphanumerics become ``_``, and one
    that does not start with a letter gets ``prefix`` (``"0"`` -> ``"n0"`` with ``"n"``)."""
    cleaned = "".join(ch if ch.isalnum() else "_" for ch in name)
    return cleaned if cleaned[:1].isalpha() else f"{prefix}{cleaned}"
