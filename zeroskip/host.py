"""The host end of the UART link to a board running a network
(:class:`zeroskip.boards.link.HostLink`).

The protocol is documented in :mod:`zeroskip.boards.link`. Here are its constants, the pure
framing functions (:func:`encode_infer`, :func:`encode_describe`, :func:`decode_result`,
:func:`decode_description`, :func:`expected_description`), used both by :func:`run` over a real
serial port and by the cocotb test that drives the gateware's pins, and :func:`run`, which sends
a batch to a board with pyserial.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass

import numpy as np

from .errors import ZeroskipError

__all__ = ["DESCRIBE", "INFER", "RESULT", "DESCRIPTION", "ERROR", "PROTOCOL_VERSION",
           "WORD_BYTES", "DESCRIPTION_LENGTH", "ERROR_LENGTH", "ERROR_FLAGS",
           "READ_TIMEOUT_SECONDS", "Description", "InputMismatch", "LinkError", "Result", "RunResult",
           "check_description", "decode_description", "decode_result", "design_id",
           "encode_describe", "encode_infer", "expected_description", "input_bytes",
           "result_length", "run"]

#: Request bytes (host to board).
INFER, DESCRIBE = b"I"[0], b"?"[0]
#: Response headers (board to host).
RESULT, DESCRIPTION, ERROR = b"R"[0], b"D"[0], b"E"[0]
#: Bumped when a field changes; the description carries it.
PROTOCOL_VERSION = 1
#: Bytes of each logit and of the latency in a result (little-endian).
WORD_BYTES = 4
#: A description: header, version, input count (2), input encoding, output count (2), output
#: encoding, clock in Hz (4), design id (4).
DESCRIPTION_LENGTH = 16
#: An error response: header and the error flags.
ERROR_LENGTH = 2
#: The flags of an error response, by bit.
ERROR_FLAGS = {0: "framing error (a byte with a low stop bit)",
               1: "overrun (a byte arrived before the network took the previous one)",
               2: "timeout (the request stopped short)"}


class LinkError(ZeroskipError):
    """The board answered something other than what the protocol allows, or nothing at all."""


class InputMismatch(ZeroskipError):
    """The inputs do not fit the network the board runs."""


@dataclass(frozen=True)
class Description:
    """What a board says it runs (the answer to :data:`DESCRIBE`).

    Encodings are ``(bits, signed)``; ``design_id`` is :func:`design_id` of the design.
    """

    version: int
    in_count: int
    in_encoding: tuple
    out_count: int
    out_encoding: tuple
    clk_freq: int
    design_id: int

    def encode(self):
        """The response bytes, header included (what the gateware sends)."""
        return bytes([DESCRIPTION, self.version]) + self.in_count.to_bytes(2, "little") + \
            bytes([_encoding_byte(*self.in_encoding)]) + self.out_count.to_bytes(2, "little") + \
            bytes([_encoding_byte(*self.out_encoding)]) + \
            self.clk_freq.to_bytes(4, "little") + self.design_id.to_bytes(4, "little")


@dataclass(frozen=True)
class Result:
    """One inference as the board answered it."""

    logits: np.ndarray  # int64, (out_count,)
    label: int  # the board's argmax
    latency_cycles: int


def _encoding_byte(bits, signed):
    return bits | (0x80 if signed else 0)


def design_id(design):
    """32 bits naming a compiled design: the first 8 hex digits of its Verilog's SHA-256 (the
    ``verilog_sha256`` of its build directory's manifest)."""
    return int(hashlib.sha256(design.verilog().encode()).hexdigest()[:8], 16)


def expected_description(design, clk_freq):
    """The :class:`Description` a board running ``design`` at ``clk_freq`` Hz answers."""
    in_act, out_act = design.in_act, design.out_act
    return Description(PROTOCOL_VERSION, math.prod(design.in_shape), (in_act.bits, in_act.signed),
                       math.prod(design.out_shape), (out_act.bits, out_act.signed),
                       int(clk_freq), design_id(design))


def input_bytes(x, act):
    """One input tensor, (C, H, W) or (F,) integers of encoding ``act``, as the bytes of a
    request: stream order (HWC), each value's low 8 bits (two's complement), a binary value as
    1 for +1 and 0 for -1."""
    from .hdl.common import encode_beats, to_beats

    return (encode_beats(to_beats(x), act).astype(np.int64) & 0xFF).astype(np.uint8).tobytes()


def encode_infer(x, act):
    """The request for one inference of input ``x`` (see :func:`input_bytes`)."""
    return bytes([INFER]) + input_bytes(x, act)


def encode_describe():
    return bytes([DESCRIBE])


def result_length(out_count):
    """Bytes of a result response: header, logits, class, latency."""
    return 1 + WORD_BYTES * out_count + 1 + WORD_BYTES


def _check_header(data, expected, length):
    if not data:
        raise LinkError("the board did not answer")
    if data[0] == ERROR:
        code = data[1] if len(data) > 1 else 0
        flags = [text for bit, text in ERROR_FLAGS.items() if code >> bit & 1]
        raise LinkError(f"the board rejected the request: {', '.join(flags) or 'no reason'} "
                        f"(error code {code:#04x})")
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
        For an error response (naming its flags), a wrong header or length.
    """
    _check_header(data, RESULT, result_length(out_count))
    words = np.frombuffer(data, dtype="<i4", count=out_count, offset=1).astype(np.int64)
    label = data[1 + WORD_BYTES * out_count]
    latency = int.from_bytes(data[-WORD_BYTES:], "little")
    return Result(words, label, latency)


def decode_description(data):
    """A description response (header included) -> :class:`Description`."""
    _check_header(data, DESCRIPTION, DESCRIPTION_LENGTH)

    def encoding(byte):
        return byte & 0x7F, bool(byte & 0x80)

    return Description(version=data[1], in_count=int.from_bytes(data[2:4], "little"),
                       in_encoding=encoding(data[4]),
                       out_count=int.from_bytes(data[5:7], "little"),
                       out_encoding=encoding(data[7]),
                       clk_freq=int.from_bytes(data[8:12], "little"),
                       design_id=int.from_bytes(data[12:16], "little"))


@dataclass(frozen=True)
class RunResult:
    """A batch run on a board by :func:`run`.

    Attributes
    ----------
    description : Description
        What the board said it runs.
    logits : numpy.ndarray
        int64, ``(N, out_count)``.
    labels : numpy.ndarray
        ``(N,)``, the board's argmax.
    latency_cycles : numpy.ndarray
        ``(N,)``, the network's latency counter per inference (it includes the link's pacing:
        see :mod:`zeroskip.boards.link`).
    wall_seconds : numpy.ndarray
        ``(N,)``, host wall time per request, from its first byte written to its answer read.
    """

    description: Description
    logits: np.ndarray
    labels: np.ndarray
    latency_cycles: np.ndarray
    wall_seconds: np.ndarray

    @property
    def latency_seconds(self):
        return self.latency_cycles / self.description.clk_freq


#: Seconds a read of :func:`run` waits for the board's bytes: an answer's bytes take milliseconds
#: on the line, the 'E' after a dropped request comes within two board timeouts (under 0.4 s at
#: the default timeout).
READ_TIMEOUT_SECONDS = 1.0


def _open(port, baud):
    import serial

    try:
        return serial.serial_for_url(port, baudrate=baud, timeout=READ_TIMEOUT_SECONDS)
    except (serial.SerialException, ValueError) as error:
        raise ZeroskipError(f"serial port {port!r}: cannot open it: {error}") from None


def _read(connection, count, what):
    data = connection.read(count)
    if len(data) != count:
        raise LinkError(f"the board stopped answering {what}: {len(data)} of {count} bytes "
                        f"within {connection.timeout} s")
    return bytes(data)


def _answer(connection, header, length, what):
    """Read one response: its header first, so that an error response is read whole and a
    wrong header is reported at once."""
    first = _read(connection, 1, what)
    if first[0] not in (header, ERROR):
        _check_header(first, header, length)
    data = first + _read(connection, (ERROR_LENGTH if first[0] == ERROR else length) - 1, what)
    if first[0] == ERROR:
        _check_header(data, header, length)
    return data


def _describe(connection):
    """Ask the board what it runs; once more if it was still dropping an earlier request."""
    for attempt in range(2):
        connection.reset_input_buffer()
        connection.write(encode_describe())
        try:
            return decode_description(_answer(connection, DESCRIPTION, DESCRIPTION_LENGTH,
                                              "a describe request"))
        except LinkError:
            if attempt:
                raise


def check_description(description, design):
    """Raise :class:`LinkError` unless the board runs ``design`` (any clock)."""
    expected = expected_description(design, description.clk_freq)
    if description.version != PROTOCOL_VERSION:
        raise LinkError(f"the board speaks link protocol version {description.version}, this "
                        f"host version {PROTOCOL_VERSION}")
    if description != expected:
        raise LinkError(f"the board runs another design: id {description.design_id:08x}, "
                        f"{description.in_count} inputs, {description.out_count} outputs; the "
                        f"build has id {expected.design_id:08x}, {expected.in_count} inputs, "
                        f"{expected.out_count} outputs")


def run(port, x_int, *, design=None, baud=115200, on_result=None):
    """Run a batch on a board through its host link, one request after the other.

    Parameters
    ----------
    port : str or serial port object
        A device (``/dev/ttyUSB1``) or pyserial URL, or an open port-like object with
        ``read``, ``write``, ``reset_input_buffer`` and ``timeout``.
    x_int : numpy.ndarray
        ``(N, C, H, W)`` or ``(N, F)`` integers of the input encoding (quantized already).
    design : zeroskip.design.Design, optional
        Check that the board runs this design (its description, :func:`check_description`).
    baud : int
        The board's baud rate.
    on_result : callable, optional
        ``on_result(index, result, description)`` with each :class:`Result` as it arrives and
        the board's :class:`Description`.

    Returns
    -------
    RunResult

    Raises
    ------
    zeroskip.errors.ZeroskipError
        If the port cannot be opened.
    InputMismatch
        If the inputs do not fit what the board runs.
    LinkError
        If the board runs another design, rejects a request or stops answering.
    """
    from .ir import Activation

    x_int = np.asarray(x_int)
    connection = _open(port, baud) if isinstance(port, str) else port
    try:
        description = _describe(connection)
        if design is not None:
            check_description(description, design)
        bits, signed = description.in_encoding
        act = Activation(bits, signed, 1.0)
        if x_int.ndim < 2 or math.prod(x_int.shape[1:]) != description.in_count:
            raise InputMismatch(f"inputs of shape {x_int.shape} do not fit the board's network: "
                                f"it takes {description.in_count} values per image")
        allowed = np.array([-1, 1]) if act.binary else np.arange(act.qmin, act.qmax + 1)
        if not np.issubdtype(x_int.dtype, np.integer) or not np.isin(x_int, allowed).all():
            what = "-1 or +1" if act.binary else f"integers in [{act.qmin}, {act.qmax}]"
            raise InputMismatch(f"inputs must be {what} (the board's input encoding), got "
                                f"{x_int.dtype} values from {x_int.min()} to {x_int.max()}")
        length = result_length(description.out_count)
        results, seconds = [], []
        for index, x in enumerate(x_int):
            started = time.monotonic()
            connection.write(encode_infer(x, act))
            result = decode_result(_answer(connection, RESULT, length, f"image {index}"),
                                   description.out_count)
            seconds.append(time.monotonic() - started)
            results.append(result)
            if on_result is not None:
                on_result(index, result, description)
    finally:
        if isinstance(port, str):
            connection.close()
    logits = np.stack([r.logits for r in results]) if results else \
        np.zeros((0, description.out_count), np.int64)
    labels = np.array([r.label for r in results], np.int64)
    return RunResult(description, logits, labels,
                     np.array([r.latency_cycles for r in results], np.int64),
                     np.array(seconds))
