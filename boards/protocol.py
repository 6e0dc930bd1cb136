"""The UART host-link protocol: what a host and a board running a network say to each other.

Both ends use this module: the gateware (:class:`zeroskip.boards.link.HostLink`) takes its
constants and the description it sends from here, and the host (:mod:`zeroskip.host`) builds
its requests and reads the board's answers with the framing functions here (:func:`encode_infer`,
:func:`encode_describe`, :func:`encode_weights`, :func:`decode_result`,
:func:`decode_description`, :func:`decode_ack`). Pure Python and numpy: no Amaranth, no serial
port.

Protocol
--------
8N1 serial at the board's baud rate (115200 by default). The host sends a request and waits for
its response before the next one; every multi-byte integer is little-endian.

Requests (host to board):

``'I'`` (0x49) then the input values, **one byte each**
    One inference. The values go in the network's stream order (HWC: pixel by pixel, row-major,
    all channels of a pixel together; a flat input in feature order), each as the low 8 bits of
    its integer in the input encoding (two's complement when signed; a binary input as 1 for +1
    and 0 for -1). Every encoding has at most 8 bits, so a byte holds any value; the board keeps
    the encoding's low bits and streams each byte straight into the network as it arrives.
``'?'`` (0x3F)
    Describe the design.
``'W'`` (0x57), the word count (4 bytes), then the words (2 bytes each)
    Load the design's weights: the words of its weight memory from address 0
    (:meth:`zeroskip.design.Design.preload_words`), each 16-bit word little-endian. A design
    whose weights live in memory without initial contents (SPRAM) infers only once they are
    loaded; they stay loaded until the next ``'W'`` begins to replace them (or the power goes).
    The board streams each word into the network as it arrives. The count must be the
    description's weight word count: a design without such weights has 0, and ``'W'`` with a
    count of 0 is then acknowledged at once. Any other count is rejected (``'E'``, the weight
    count flag) after the line has been quiet for the timeout, with the words that followed it
    ignored and the loaded weights kept.

Any other byte where a request should start is ignored.

Responses (board to host):

``'R'`` (0x52), the logits (4 bytes each, signed), the class (1 byte), the latency (4 bytes)
    The result of ``'I'``: every logit sign-extended to 32 bits (a binary output as -1 / +1),
    then the class (the argmax, the first of equal logits), then the network's
    ``latency_cycles`` counter for this inference: clock cycles from its first input beat taken
    to its last logit taken. Over the link the network is fed one byte per UART frame and its
    logits leave at the UART's pace, so this latency *includes the link's pacing*: it is the
    time the board spent on the request, not the network's latency at full stream rate (that is
    what ``zeroskip sim`` measures).
``'D'`` (0x44) and 19 bytes
    The answer to ``'?'``: protocol version (1 byte), input values (2), input encoding (1 byte:
    bits, plus 0x80 if signed), output values (2), output encoding (1), clock frequency in Hz
    (4), design id (4: the first 32 bits of the SHA-256 of the network's Verilog, as in the build
    directory's ``manifest.json``), weight words (4: what ``'W'`` must bring before the first
    ``'I'``; 0 when the weights are in the bitstream). The host converts cycles to seconds with
    the clock and checks it talks to the net it expects with the rest
    (:func:`expected_description`). An SPRAM design's Verilog holds no weights: its id names
    the network's structure, and the weights it runs are the last ones the host loaded.
``'A'`` (0x41)
    The answer to a ``'W'`` request whose words all arrived: the weights are loaded.
``'E'`` (0x45) and 1 byte of flags
    A request was abandoned or refused (:data:`ERROR_FLAGS`): bit 0 framing error (a byte with a
    low stop bit), bit 1 overrun (a byte arrived before the network took the one before), bit 2
    timeout (the request stopped short: no byte for the board's timeout), bit 3 weight count
    (a ``'W'`` whose count is not the design's), bit 4 no weights (an ``'I'`` before the
    design's weights were loaded).

Abandoned requests. A framing error, an overrun or a gap of the board's timeout (0.1 s by
default) in the middle of an ``'I'`` or ``'W'`` request abandons it: the board resets the
network (dropping a partial input), ignores the line until it has been quiet for the timeout
again (the rest of a broken image is never read as requests), then answers ``'E'`` and waits for
the next request. Bytes that arrive while the board answers are dropped. The host may send the
same request again after the ``'E'``. A ``'W'`` abandoned before its first word keeps the
weights loaded before; one abandoned later leaves none loaded (some words were replaced), and
the board refuses every ``'I'`` until a ``'W'`` is whole. An ``'I'`` while no weights are loaded
is refused the same way as an abandoned one (its image ignored until the line is quiet, then
``'E'`` with the no-weights flag): the network never starts without its weights.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from ..errors import ZeroskipError

__all__ = ["DESCRIBE", "INFER", "WEIGHTS", "RESULT", "DESCRIPTION", "ACK", "ERROR",
           "PROTOCOL_VERSION", "WORD_BYTES", "DESCRIPTION_LENGTH", "ACK_LENGTH", "ERROR_LENGTH",
           "FRAMING_BIT", "OVERRUN_BIT", "TIMEOUT_BIT", "COUNT_BIT", "NO_WEIGHTS_BIT",
           "LINE_FLAGS", "ERROR_FLAGS", "MAX_INPUTS", "MAX_CLASSES", "MAX_WEIGHT_WORDS",
           "Description", "LinkError", "RequestRejected", "Result", "check_header", "decode_ack",
           "decode_description", "decode_result", "design_id", "encode_describe", "encode_infer",
           "encode_weights", "error_flags_text", "expected_description", "input_bytes",
           "result_length", "weight_words"]

#: Request bytes (host to board).
INFER, DESCRIBE, WEIGHTS = b"I"[0], b"?"[0], b"W"[0]
#: Response headers (board to host).
RESULT, DESCRIPTION, ACK, ERROR = b"R"[0], b"D"[0], b"A"[0], b"E"[0]
#: Bumped when a field changes; the description carries it.
PROTOCOL_VERSION = 2
#: Bytes of each logit and of the latency in a result, and of a weight count (little-endian).
WORD_BYTES = 4
#: A description: header, version, input count (2), input encoding, output count (2), output
#: encoding, clock in Hz (4), design id (4), weight words (4).
DESCRIPTION_LENGTH = 20
#: The answer to a whole ``'W'``: its header alone.
ACK_LENGTH = 1
#: An error response: header and the error flags.
ERROR_LENGTH = 2
#: Bits of an error response's flags.
FRAMING_BIT, OVERRUN_BIT, TIMEOUT_BIT, COUNT_BIT, NO_WEIGHTS_BIT = 0, 1, 2, 3, 4
#: The flags a disturbance on the line gives (the same request may well succeed again); the
#: others say the request cannot succeed as it is.
LINE_FLAGS = 1 << FRAMING_BIT | 1 << OVERRUN_BIT | 1 << TIMEOUT_BIT
#: The flags of an error response, by bit.
ERROR_FLAGS = {FRAMING_BIT: "framing error (a byte with a low stop bit)",
               OVERRUN_BIT: "overrun (a byte arrived before the network took the previous one)",
               TIMEOUT_BIT: "timeout (the request stopped short)",
               COUNT_BIT: "weight count (the 'W' request's word count is not the design's)",
               NO_WEIGHTS_BIT: "no weights (the design's weights are not loaded: 'W' first)"}
#: The most input values a description's 2-byte count holds, and the most classes a result's
#: 1-byte class index can name.
MAX_INPUTS, MAX_CLASSES = 0xFFFF, 0x100
#: The most words a ``'W'`` request's 4-byte count holds.
MAX_WEIGHT_WORDS = 0xFFFFFFFF


class LinkError(ZeroskipError):
    """The board answered something other than what the protocol allows, or nothing at all."""


class RequestRejected(LinkError):
    """The board answered :data:`ERROR`: it abandoned the request; ``flags`` are its error flags
    (bits of :data:`ERROR_FLAGS`). The same request may be sent again."""

    def __init__(self, flags):
        super().__init__(f"the board rejected the request: {error_flags_text(flags)} "
                         f"(error code {flags:#04x})")
        self.flags = flags


@dataclass(frozen=True)
class Description:
    """What a board says it runs (the answer to :data:`DESCRIBE`).

    Encodings are ``(bits, signed)``; ``design_id`` is :func:`design_id` of the design;
    ``weight_words`` what a ``'W'`` request brings (0: none needed).
    """

    version: int
    in_count: int
    in_encoding: tuple
    out_count: int
    out_encoding: tuple
    clk_freq: int
    design_id: int
    weight_words: int

    def encode(self):
        """The response bytes, header included (what the gateware sends)."""
        return bytes([DESCRIPTION, self.version]) + self.in_count.to_bytes(2, "little") + \
            bytes([_encoding_byte(*self.in_encoding)]) + self.out_count.to_bytes(2, "little") + \
            bytes([_encoding_byte(*self.out_encoding)]) + \
            self.clk_freq.to_bytes(4, "little") + self.design_id.to_bytes(4, "little") + \
            self.weight_words.to_bytes(4, "little")


@dataclass(frozen=True)
class Result:
    """One inference as the board answered it."""

    logits: np.ndarray  # int64, (out_count,)
    label: int  # the board's argmax
    latency_cycles: int

    def encode(self):
        """The response bytes, header included (what the gateware sends for this inference).

        Raises
        ------
        ValueError, OverflowError
            If a field does not fit its bytes (a logit 32 signed bits, the class one byte, the
            latency 32 bits).
        """
        logits = np.asarray(self.logits, dtype=np.int64)
        if logits.size and not (np.all(logits >= -2**31) and np.all(logits < 2**31)):
            raise ValueError(f"logits must fit 32 signed bits, got {logits.min()} to "
                             f"{logits.max()}")
        return bytes([RESULT]) + logits.astype("<i4").tobytes() + bytes([int(self.label)]) + \
            int(self.latency_cycles).to_bytes(WORD_BYTES, "little")


def error_flags_text(flags):
    """The error flags of an :data:`ERROR` response, in words (``'no reason'`` for none)."""
    return ", ".join(text for bit, text in ERROR_FLAGS.items() if flags >> bit & 1) or "no reason"


def _encoding_byte(bits, signed):
    return bits | (0x80 if signed else 0)


def design_id(design):
    """32 bits naming a compiled design: the first 8 hex digits of its Verilog's SHA-256 (as
    its build directory's manifest lists it under ``files``)."""
    return int(hashlib.sha256(design.verilog().encode()).hexdigest()[:8], 16)


def weight_words(design):
    """The words a ``'W'`` request brings to a board running ``design``: its weight memory's
    (:meth:`~zeroskip.design.Design.preload_words`), none when the bitstream holds them."""
    return list(design.preload_words() or ())


def expected_description(design, clk_freq):
    """The :class:`Description` a board running ``design`` at ``clk_freq`` Hz answers."""
    in_act, out_act = design.in_act, design.out_act
    return Description(PROTOCOL_VERSION, math.prod(design.in_shape), (in_act.bits, in_act.signed),
                       math.prod(design.out_shape), (out_act.bits, out_act.signed),
                       int(clk_freq), design_id(design), len(weight_words(design)))


def input_bytes(x, act):
    """One input tensor, (C, H, W) or (F,) integers of encoding ``act``, as the bytes of a
    request: stream order (HWC), each value's low 8 bits (two's complement), a binary value as
    1 for +1 and 0 for -1.

    This is the stream the network reads (:mod:`zeroskip.hdl.common`: HWC order, a binary
    activation as one bit), written here in numpy alone so that the protocol needs no Amaranth.

    Raises
    ------
    ValueError
        For a binary ``act`` and a value other than -1 or +1.
    """
    x = np.asarray(x)
    values = (x.transpose(1, 2, 0) if x.ndim == 3 else x).reshape(-1)
    if act.binary:
        if not np.all(np.abs(values) == 1):
            raise ValueError("binary activations must be -1 or +1, found "
                             f"{sorted(set(np.unique(values).tolist()) - {-1, 1})[:5]}")
        values = values > 0
    return (values.astype(np.int64) & 0xFF).astype(np.uint8).tobytes()


def encode_infer(x, act):
    """The request for one inference of input ``x`` (see :func:`input_bytes`)."""
    return bytes([INFER]) + input_bytes(x, act)


def encode_describe():
    return bytes([DESCRIBE])


def encode_weights(words):
    """The request that loads ``words`` (16-bit integers, in weight-memory order): ``'W'``, the
    count (4 bytes), each word little-endian.

    Raises
    ------
    ValueError
        If a word is not an integer from 0 to 65535, or there are more than
        :data:`MAX_WEIGHT_WORDS`.
    """
    words = np.asarray(words)
    if words.ndim != 1 or words.size and not np.issubdtype(words.dtype, np.integer):
        raise ValueError(f"weight words must be a sequence of integers, got {words.dtype} of "
                         f"shape {words.shape}")
    if words.size and (words.min() < 0 or words.max() > 0xFFFF):
        raise ValueError(f"weight words must be 16-bit (0 to 65535), got {words.min()} to "
                         f"{words.max()}")
    if words.size > MAX_WEIGHT_WORDS:
        raise ValueError(f"a 'W' request carries at most {MAX_WEIGHT_WORDS} words, got "
                         f"{words.size}")
    return bytes([WEIGHTS]) + words.size.to_bytes(WORD_BYTES, "little") + \
        words.astype("<u2").tobytes()


def result_length(out_count):
    """Bytes of a result response: header, logits, class, latency."""
    return 1 + WORD_BYTES * out_count + 1 + WORD_BYTES


def check_header(data, expected, length):
    """Raise :class:`LinkError` unless ``data`` is a whole response of ``length`` bytes with
    header ``expected``: no answer, an error response (:class:`RequestRejected`, naming its
    flags), another header or another length."""
    if not data:
        raise LinkError("the board did not answer")
    if data[0] == ERROR:
        raise RequestRejected(data[1] if len(data) > 1 else 0)
    if data[0] != expected:
        raise LinkError(f"the board answered header byte {data[0]:#04x}, expected "
                        f"{expected:#04x} ({chr(expected)!r})")
    if len(data) != length:
        raise LinkError(f"the board's {chr(expected)!r} answer has {len(data)} bytes, expected "
                        f"{length}")


def decode_result(data, out_count):
    """A result response (header included) -> :class:`Result`.

    Raises
    ------
    LinkError
        For an error response (:class:`RequestRejected`, naming its flags), a wrong header or
        length, or a class index that is not one of the ``out_count`` logits.
    """
    check_header(data, RESULT, result_length(out_count))
    words = np.frombuffer(data, dtype="<i4", count=out_count, offset=1).astype(np.int64)
    label = data[1 + WORD_BYTES * out_count]
    if label >= out_count:
        raise LinkError(f"the board answered class {label}, beyond its {out_count} logits")
    latency = int.from_bytes(data[-WORD_BYTES:], "little")
    return Result(words, label, latency)


def decode_ack(data):
    """Check an acknowledgement (the answer to a whole ``'W'``).

    Raises
    ------
    LinkError
        For an error response (:class:`RequestRejected`, naming its flags), a wrong header or
        length.
    """
    check_header(data, ACK, ACK_LENGTH)


def decode_description(data):
    """A description response (header included) -> :class:`Description`.

    Any 19 bytes after the header decode: whether the host can use what they describe (its
    protocol version, its clock) is the host's check (:func:`zeroskip.host.check_compatible`).

    Raises
    ------
    LinkError
        For an error response (:class:`RequestRejected`), a wrong header or length.
    """
    check_header(data, DESCRIPTION, DESCRIPTION_LENGTH)

    def encoding(byte):
        return byte & 0x7F, bool(byte & 0x80)

    return Description(version=data[1], in_count=int.from_bytes(data[2:4], "little"),
                       in_encoding=encoding(data[4]),
                       out_count=int.from_bytes(data[5:7], "little"),
                       out_encoding=encoding(data[7]),
                       clk_freq=int.from_bytes(data[8:12], "little"),
                       design_id=int.from_bytes(data[12:16], "little"),
                       weight_words=int.from_bytes(data[16:20], "little"))
