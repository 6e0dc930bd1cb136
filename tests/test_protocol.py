"""The host-link protocol (``zeroskip.boards.protocol``) on its own: the framing functions,
the request bytes against the network's stream, and property-based fuzzing of the decoders (any
bytes a board or a noisy line can give decode to a valid answer or a LinkError, nothing else)."""

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from zeroskip import ir
from zeroskip.boards import protocol

# No deadline: the tests share the machine, and a slow example is not a wrong one.
FUZZ = settings(max_examples=300, deadline=None)


# --- framing ----------------------------------------------------------------------------------

def test_description_round_trips_and_errors_name_their_flags():
    description = protocol.Description(2, 64, (8, False), 10, (8, True), 12_000_000, 0xDEADBEEF,
                                       0x12345)
    data = description.encode()
    assert len(data) == protocol.DESCRIPTION_LENGTH
    assert data[-4:] == bytes([0x45, 0x23, 0x01, 0x00])  # the weight words, little-endian
    assert protocol.decode_description(data) == description
    with pytest.raises(protocol.LinkError, match="timeout"):
        protocol.decode_result(bytes([protocol.ERROR, 0x04]), 10)
    with pytest.raises(protocol.LinkError, match="header byte 0x41"):
        protocol.decode_description(b"A" + data[1:])
    with pytest.raises(protocol.LinkError, match="has 19 bytes, expected 20"):
        protocol.decode_description(data[:-1])
    with pytest.raises(protocol.LinkError, match="did not answer"):
        protocol.decode_result(b"", 10)


def test_a_result_round_trips_and_its_class_must_name_a_logit():
    result = protocol.Result(np.array([-2**31, 7, 2**31 - 1]), 2, 0xFFFFFFFF)
    data = result.encode()
    assert len(data) == protocol.result_length(3)
    decoded = protocol.decode_result(data, 3)
    assert decoded.logits.tolist() == result.logits.tolist()
    assert (decoded.label, decoded.latency_cycles) == (2, 0xFFFFFFFF)
    wrong = data[:13] + bytes([3]) + data[14:]
    with pytest.raises(protocol.LinkError, match="^the board answered class 3, beyond its 3 "
                                                 "logits$"):
        protocol.decode_result(wrong, 3)
    with pytest.raises(ValueError, match="32 signed bits"):
        protocol.Result(np.array([2**31]), 0, 0).encode()


def test_an_error_answer_is_a_rejection_naming_each_flag():
    flags = 1 << protocol.FRAMING_BIT | 1 << protocol.TIMEOUT_BIT
    with pytest.raises(protocol.RequestRejected) as error:
        protocol.decode_result(bytes([protocol.ERROR, flags]), 10)
    assert error.value.flags == flags
    assert str(error.value) == (f"the board rejected the request: "
                                f"{protocol.ERROR_FLAGS[protocol.FRAMING_BIT]}, "
                                f"{protocol.ERROR_FLAGS[protocol.TIMEOUT_BIT]} (error code 0x05)")
    assert protocol.error_flags_text(0) == "no reason"


def test_weights_request_is_a_count_then_16_bit_words_and_its_answer_one_byte():
    assert protocol.encode_weights([1, 0x1234, 0xFFFF]) == \
        b"W\x03\x00\x00\x00" + b"\x01\x00\x34\x12\xff\xff"
    assert protocol.encode_weights(np.arange(300, dtype=np.uint16))[1:5] == b"\x2c\x01\x00\x00"
    assert protocol.encode_weights([]) == b"W\x00\x00\x00\x00"
    for words, message in (([0, 65536], "16-bit .* 0 to 65536"), ([-1], "16-bit .* -1 to -1"),
                           ([1.0], "integers, got float64"), ([[1]], r"shape \(1, 1\)")):
        with pytest.raises(ValueError, match=message):
            protocol.encode_weights(words)
    assert protocol.decode_ack(b"A") is None
    with pytest.raises(protocol.RequestRejected, match="weight count") as error:
        protocol.decode_ack(bytes([protocol.ERROR, 1 << protocol.COUNT_BIT]))
    assert error.value.flags == 0x08
    with pytest.raises(protocol.LinkError, match="no weights"):
        protocol.decode_result(bytes([protocol.ERROR, 1 << protocol.NO_WEIGHTS_BIT]), 3)
    with pytest.raises(protocol.LinkError, match="'A' answer has 2 bytes, expected 1"):
        protocol.decode_ack(b"AA")
    assert protocol.LINE_FLAGS == 0x07 and set(protocol.ERROR_FLAGS) == set(range(5))


def test_request_bytes_are_hwc_twos_complement_and_binary_as_bits():
    act = ir.Activation(8, True, 0.1)
    x = np.array([[[1, -2]], [[-128, 127]]])  # (C=2, H=1, W=2)
    assert protocol.encode_infer(x, act) == bytes([protocol.INFER, 1, 0x80, 0xFE, 0x7F])
    binary = ir.Activation(1, True, 1.0)
    assert protocol.input_bytes(np.array([1, -1, -1]), binary) == b"\x01\x00\x00"


@pytest.mark.parametrize("shape", [(3, 2, 4), (1, 5, 3), (7,)], ids=["chw", "one-channel", "flat"])
@pytest.mark.parametrize("bits, signed", [(8, True), (4, False), (2, True), (1, True)],
                         ids=["int8", "uint4", "int2", "binary"])
def test_request_bytes_are_the_stream_the_network_reads(shape, bits, signed):
    """The protocol writes the stream order and binary encoding in numpy alone; they must stay
    the network's (hdl.common), since the gateware streams each byte straight into it."""
    from zeroskip.hdl.common import encode_beats, to_beats

    act = ir.Activation(bits, signed, 1.0)
    rng = np.random.default_rng(bits + len(shape))
    x = rng.choice([-1, 1], shape) if act.binary else rng.integers(act.qmin, act.qmax + 1, shape)
    stream = encode_beats(to_beats(x), act).astype(np.int64) & 0xFF
    assert protocol.input_bytes(x, act) == stream.astype(np.uint8).tobytes()
    if act.binary:
        with pytest.raises(ValueError, match="must be -1 or \\+1, found \\[0\\]"):
            protocol.input_bytes(np.zeros(shape, np.int64), act)


def test_protocol_loads_without_amaranth_or_pyserial():
    """The host side imports the protocol; it must not pull in the gateware's or the port's
    libraries (nor, through the package, the board platforms)."""
    from zeroskip import host

    code = ("import sys, zeroskip.boards.protocol, zeroskip.host; print(sorted({m.split('.')[0] "
            "for m in sys.modules} & {'amaranth', 'amaranth_boards', 'serial', 'torch'}))")
    result = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                            text=True)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
    assert host.decode_result is protocol.decode_result and host.LinkError is protocol.LinkError


# --- fuzzing the decoders ---------------------------------------------------------------------

@st.composite
def results(draw):
    """(out_count, a Result the protocol allows for it)."""
    out_count = draw(st.integers(1, 12))
    logits = draw(st.lists(st.integers(-2**31, 2**31 - 1), min_size=out_count,
                           max_size=out_count))
    label, latency = draw(st.integers(0, out_count - 1)), draw(st.integers(0, 2**32 - 1))
    return out_count, protocol.Result(np.array(logits, np.int64), label, latency)


descriptions = st.builds(
    protocol.Description, version=st.integers(0, 255), in_count=st.integers(0, 0xFFFF),
    in_encoding=st.tuples(st.integers(0, 127), st.booleans()), out_count=st.integers(0, 0xFFFF),
    out_encoding=st.tuples(st.integers(0, 127), st.booleans()),
    clk_freq=st.integers(0, 2**32 - 1), design_id=st.integers(0, 2**32 - 1),
    weight_words=st.integers(0, 2**32 - 1))


@st.composite
def mutated(draw, data):
    """``data`` with up to 3 of: a byte replaced, a byte dropped, a byte inserted, the tail cut
    off; the header byte included."""
    data = bytearray(data)
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["replace", "drop", "insert", "cut"]))
        at = draw(st.sampled_from(range(max(1, len(data)))))
        if kind == "insert":
            data.insert(at, draw(st.integers(0, 255)))
        elif not data:
            continue
        elif kind == "replace":
            data[at] = draw(st.integers(0, 255))
        elif kind == "drop":
            del data[at]
        else:
            del data[at:]
    return bytes(data)


def decoded_or_link_error(decode, data, *args):
    """``decode(data, *args)``, or None for a LinkError; an error answer must be a
    RequestRejected naming each of its flags."""
    try:
        return decode(data, *args)
    except protocol.LinkError as error:
        if data[:1] == bytes([protocol.ERROR]):
            assert isinstance(error, protocol.RequestRejected)
            for bit, text in protocol.ERROR_FLAGS.items():
                assert (text in str(error)) == bool(error.flags >> bit & 1), str(error)
        return None


def assert_result_is(result, data, out_count):
    """A decoded result is the frame it came from, and one the protocol allows."""
    assert result.logits.shape == (out_count,) and result.logits.dtype == np.int64
    assert 0 <= result.label < out_count and 0 <= result.latency_cycles < 2**32
    assert result.encode() == data


@FUZZ
@given(out_count=st.integers(0, 16), change=st.data())
def test_any_bytes_decode_to_a_result_or_a_link_error(out_count, change):
    # Random bytes, or random bytes behind a result's header at a result's length.
    framed = st.binary(min_size=protocol.result_length(out_count) - 1,
                       max_size=protocol.result_length(out_count) - 1).map(b"R".__add__)
    data = change.draw(st.binary(max_size=80) | framed)
    result = decoded_or_link_error(protocol.decode_result, data, out_count)
    if result is not None:
        assert_result_is(result, data, out_count)


@FUZZ
@given(frame=results(), change=st.data())
def test_a_mutated_result_decodes_to_itself_or_a_link_error(frame, change):
    out_count, result = frame
    data = result.encode()
    decoded = protocol.decode_result(data, out_count)
    assert decoded.logits.tolist() == result.logits.tolist()
    assert (decoded.label, decoded.latency_cycles) == (result.label, result.latency_cycles)
    data = change.draw(mutated(data))
    decoded = decoded_or_link_error(protocol.decode_result, data, out_count)
    if decoded is not None:
        assert_result_is(decoded, data, out_count)


@FUZZ
@given(data=st.binary(max_size=32) | st.binary(min_size=19, max_size=19).map(b"D".__add__))
def test_any_bytes_decode_to_a_description_or_a_link_error(data):
    description = decoded_or_link_error(protocol.decode_description, data)
    if description is not None:
        assert description.encode() == data


@FUZZ
@given(description=descriptions, change=st.data())
def test_a_mutated_description_decodes_to_itself_or_a_link_error(description, change):
    assert protocol.decode_description(description.encode()) == description
    data = change.draw(mutated(description.encode()))
    decoded = decoded_or_link_error(protocol.decode_description, data)
    if decoded is not None:
        assert decoded.encode() == data


@FUZZ
@given(data=st.binary(max_size=4))
def test_any_bytes_are_an_acknowledgement_or_a_link_error(data):
    try:
        protocol.decode_ack(data)
    except protocol.LinkError:
        assert data != b"A"
        decoded_or_link_error(protocol.decode_ack, data)  # an error answer names its flags
    else:
        assert data == b"A"
