"""The host end of the UART link to a board running a network
(:class:`zeroskip.boards.link.HostLink`).

The protocol, its constants and its pure framing functions are :mod:`zeroskip.boards.protocol`;
they are importable from here too (:func:`encode_infer`, :func:`encode_describe`,
:func:`encode_weights`, :func:`decode_result`, :func:`decode_description`,
:func:`expected_description`, ...). Here is :func:`run`, which sends a batch to a board over a
serial port (pyserial), after the design's weights when the board says it needs them, and checks
what the board answers.
"""

from __future__ import annotations

import functools
import math
import operator
import time
from dataclasses import dataclass

import numpy as np

from .boards.protocol import (ACK, ACK_LENGTH, DESCRIBE, DESCRIPTION, DESCRIPTION_LENGTH, ERROR,
                              ERROR_FLAGS, ERROR_LENGTH, INFER, LINE_FLAGS, PROTOCOL_VERSION,
                              RESULT, WEIGHTS, WORD_BYTES, Description, LinkError,
                              RequestRejected, Result, check_header, decode_ack,
                              decode_description, decode_result, design_id, encode_describe,
                              encode_infer, encode_weights, error_flags_text,
                              expected_description, input_bytes, result_length, weight_words)
from .errors import ZeroskipError

__all__ = ["DESCRIBE", "INFER", "WEIGHTS", "RESULT", "DESCRIPTION", "ACK", "ERROR",
           "PROTOCOL_VERSION", "WORD_BYTES", "DESCRIPTION_LENGTH", "ACK_LENGTH", "ERROR_LENGTH",
           "ERROR_FLAGS", "READ_TIMEOUT_SECONDS", "ATTEMPTS", "RequestRejected",
           "check_compatible", "Description", "InputMismatch", "LinkError", "Result", "RunResult",
           "WeightsNeeded", "check_description", "decode_ack", "decode_description",
           "decode_result", "design_id", "encode_describe", "encode_infer", "encode_weights",
           "expected_description", "input_bytes", "result_length", "run"]


class InputMismatch(ZeroskipError):
    """The inputs do not fit the network the board runs."""


class WeightsNeeded(LinkError):
    """The board needs its weights loaded (its description counts weight words), and
    :func:`run` was given no design to take them from."""


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
        ``(N,)``, host wall time per image, from the first byte of the request the board
        answered written to its answer read (an image the board rejected is sent again).
    weight_words : int
        The weight words loaded before the first image (0: the board needed none).
    """

    description: Description
    logits: np.ndarray
    labels: np.ndarray
    latency_cycles: np.ndarray
    wall_seconds: np.ndarray
    weight_words: int = 0

    @property
    def latency_seconds(self):
        return self.latency_cycles / self.description.clk_freq


#: Times :func:`run` sends an image the board rejects (:data:`ERROR`) before it gives up: a
#: rejection is a disturbance on the line, rarely twice in a row; a board that rejects every
#: attempt has a lasting fault (its baud rate is not the host's, or its network overruns).
ATTEMPTS = 3

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


def _read(connection, count):
    data = connection.read(count)
    if len(data) != count:
        raise LinkError(f"the board stopped answering: {len(data)} of {count} bytes within "
                        f"{connection.timeout} s")
    return bytes(data)


def _answer(connection, header, length):
    """Read one response: its header first, so that an error response is read whole and a
    wrong header is reported at once."""
    first = _read(connection, 1)
    if first[0] not in (header, ERROR):
        check_header(first, header, length)
    data = first + _read(connection, (ERROR_LENGTH if first[0] == ERROR else length) - 1)
    if first[0] == ERROR:
        check_header(data, header, length)
    return data


def _describe(connection):
    """Ask the board what it runs; once more if it was still dropping an earlier request."""
    for attempt in range(2):
        connection.reset_input_buffer()
        connection.write(encode_describe())
        try:
            return decode_description(_answer(connection, DESCRIPTION, DESCRIPTION_LENGTH))
        except LinkError as error:
            if attempt:
                raise LinkError(f"the describe request: {error}") from None


def _request(connection, request, header, length):
    """Send a request and read its answer, sending it again after each :data:`ERROR` answer
    for a disturbance on the line (:data:`LINE_FLAGS`), :data:`ATTEMPTS` times in all; another
    error answer ends it at once. Returns the answer and the seconds of the attempt the board
    answered."""
    rejected = []
    for _ in range(ATTEMPTS):
        started = time.monotonic()
        connection.write(request)
        try:
            data = _answer(connection, header, length)
        except RequestRejected as error:
            if error.flags & ~LINE_FLAGS:
                raise LinkError(f"the board rejected it: {error_flags_text(error.flags)} "
                                f"(error code {error.flags:#04x})") from None
            rejected.append(error.flags)
            connection.reset_input_buffer()  # whatever the broken request left on the line
            continue
        return data, time.monotonic() - started
    flags = functools.reduce(operator.or_, rejected)
    raise LinkError(f"the board rejected it {ATTEMPTS} times: {error_flags_text(flags)} (error "
                    f"codes {', '.join(f'{code:#04x}' for code in rejected)})")


def _infer(connection, request, out_count):
    """One image's :class:`Result` (:func:`_request`) and the seconds it took."""
    data, seconds = _request(connection, request, RESULT, result_length(out_count))
    return decode_result(data, out_count), seconds


def _load_weights(connection, description, design, baud):
    """Send ``design``'s weight words (``'W'``) to a board whose ``description`` counts them,
    and read the acknowledgement (:func:`_request`). Returns the words sent."""
    if design is None:
        raise WeightsNeeded(f"the board's design needs its {description.weight_words} weight "
                            "words loaded before it infers, and no design to take them from "
                            "was given")
    words = weight_words(design)
    request = encode_weights(words)
    # The acknowledgement follows the last word on the line, which may leave the host's
    # buffers well after ``write`` returns.
    previous = connection.timeout
    connection.timeout = previous + len(request) * 10 / baud
    try:
        decode_ack(_request(connection, request, ACK, ACK_LENGTH)[0])
    except LinkError as error:
        raise LinkError(f"the weights ({len(words)} words): {error}") from None
    finally:
        connection.timeout = previous
    return len(words)


def check_compatible(description):
    """Raise :class:`LinkError` unless this host can talk to a board describing itself so: the
    board speaks this host's protocol version (:data:`PROTOCOL_VERSION`), its clock is above
    0 Hz (latencies in cycles are converted to seconds with it), and its input encoding is an
    activation's (1 to 8 bits, a 1-bit one signed: every input value travels as one byte)."""
    from .ir import Activation

    if description.version != PROTOCOL_VERSION:
        raise LinkError(f"the board speaks link protocol version {description.version}, this "
                        f"host version {PROTOCOL_VERSION}")
    if description.clk_freq <= 0:
        raise LinkError(f"the board reports a clock of {description.clk_freq} Hz: its latencies "
                        "in cycles cannot be converted to seconds")
    bits, signed = description.in_encoding
    try:
        Activation(bits, signed, 1.0)
    except ZeroskipError as error:
        raise LinkError(f"the board describes an input encoding the protocol does not carry "
                        f"({bits}-bit, {'signed' if signed else 'unsigned'}): {error}") from None


def check_description(description, design):
    """Raise :class:`LinkError` unless the host can talk to the board
    (:func:`check_compatible`) and the board runs ``design`` (any clock)."""
    check_compatible(description)
    expected = expected_description(design, description.clk_freq)
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
        Check that the board runs this design (its description, :func:`check_description`);
        without it the board's description is still checked (:func:`check_compatible`).
    baud : int
        The board's baud rate.
    on_result : callable, optional
        ``on_result(index, result, description)`` with each :class:`Result` as it arrives and
        the board's :class:`Description`.

    A board whose description counts weight words (its weights in SPRAM) first gets
    ``design``'s (:func:`encode_weights`), in every run: whether a board still holds weights
    sent before (it has not been reset since) cannot be known.

    Returns
    -------
    RunResult

    Raises
    ------
    zeroskip.errors.ZeroskipError
        If the port cannot be opened.
    InputMismatch
        If the inputs do not fit what the board runs.
    WeightsNeeded
        If the board needs weights and no ``design`` was given.
    LinkError
        If the board's description fails :func:`check_compatible`, it runs another design
        (with ``design``), rejects an image or the weights :data:`ATTEMPTS` times in a row, or
        once for another reason than the line (no weights loaded, say), answers out of
        protocol (a class beyond its logits, say) or stops answering; the message names the
        image or the weights.

    An image or the weights the board rejects (:data:`ERROR`: a framing error, an overrun or a
    timeout on the line) is sent again, up to :data:`ATTEMPTS` times in all.
    """
    x_int = np.asarray(x_int)
    connection = _open(port, baud) if isinstance(port, str) else port
    try:
        description = _describe(connection)
        if design is None:
            check_compatible(description)
        else:
            check_description(description, design)
        act = _check_inputs(x_int, description)
        loaded = _load_weights(connection, description, design, baud) \
            if description.weight_words else 0
        results, seconds = [], []
        for index, x in enumerate(x_int):
            try:
                result, elapsed = _infer(connection, encode_infer(x, act), description.out_count)
            except LinkError as error:
                raise LinkError(f"image {index}: {error}") from None
            seconds.append(elapsed)
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
                     np.array(seconds), loaded)


def _check_inputs(x_int, description):
    """The board's input :class:`~zeroskip.ir.Activation`, once ``x_int`` fits it
    (:class:`InputMismatch` if not)."""
    from .ir import Activation

    act = Activation(*description.in_encoding, 1.0)
    if x_int.ndim < 2 or math.prod(x_int.shape[1:]) != description.in_count:
        raise InputMismatch(f"inputs of shape {x_int.shape} do not fit the board's network: "
                            f"it takes {description.in_count} values per image")
    allowed = np.array([-1, 1]) if act.binary else np.arange(act.qmin, act.qmax + 1)
    if not np.issubdtype(x_int.dtype, np.integer) or not np.isin(x_int, allowed).all():
        what = "-1 or +1" if act.binary else f"integers in [{act.qmin}, {act.qmax}]"
        raise InputMismatch(f"inputs must be {what} (the board's input encoding), got "
                            f"{x_int.dtype} values from {x_int.min()} to {x_int.max()}")
    return act
