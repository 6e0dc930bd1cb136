"""The sequential engine's memories: single-port blocks of 16-bit words, and the line buffer.

A :class:`MemoryBlock` is one port, read or write each cycle, with a byte enable per half word:
the shape of an iCE40UP5K SPRAM (16384 x 16 bits, one port), so that Yosys maps a block of that
size onto one SB_SPRAM256KA (``synth_ice40 -spram``); it is written without initial contents
(:data:`zeroskip.hdl.verilog.UNINITIALIZED`), as an SPRAM has none. Elsewhere the same block is
block RAM. The :class:`LineBuffer` is 8 banks of bytes, one write and one read port each.
"""

from __future__ import annotations

from amaranth.hdl import Module, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .seq_plan import BANKS
from .verilog import UNINITIALIZED

__all__ = ["LineBuffer", "MemoryBlock", "block_port_signature", "line_read_signature",
           "line_write_signature", "ram"]


def ram(shape, depth, init=None, *, block=False):
    """A memory of the engine: without initial contents unless ``init`` is given, and with an
    undefined read of an address written in the same cycle (no such read is ever used: writes
    and reads of a table are in different phases, the line buffer's ring keeps them apart),
    which saves Yosys the logic that would order them. ``block``: a ROM Yosys would make
    logic of, put in a RAM block instead (on a UP5K logic runs out before RAM blocks do)."""
    attrs = {"no_rw_check": 1}
    if init is None:
        attrs[UNINITIALIZED] = 1
    elif block:
        attrs["rom_style"] = "block"
    return Memory(shape=shape, depth=depth, init=[] if init is None else init, attrs=attrs)


def block_port_signature(addr_width):
    """One access to a :class:`MemoryBlock`: ``addr``, ``write`` data with a byte ``mask``
    (bit 0 the low byte), ``we``, ``re``; ``rdata`` the word read the cycle before."""
    return wiring.Signature({
        "addr": Out(addr_width), "wdata": Out(16), "mask": Out(2), "we": Out(1), "re": Out(1),
        "rdata": In(16),
    })


class MemoryBlock(wiring.Component):
    """``words`` 16-bit words behind one port (read data one cycle after ``re``; a write keeps
    the read data as it was).

    Members
    -------
    port : In(block_port_signature(ceil_log2(words)))
    """

    def __init__(self, words):
        if not isinstance(words, int) or words < 1:
            raise ValueError(f"words must be a positive integer, got {words!r}")
        self.words = words
        super().__init__({"port": In(block_port_signature(max(ceil_log2(words), 1)))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.ram = memory = ram(unsigned(16), self.words)
        write, read = memory.write_port(granularity=8), memory.read_port()
        port = self.port
        m.d.comb += [write.addr.eq(port.addr), read.addr.eq(port.addr),
                     write.data.eq(port.wdata), write.en.eq(port.mask & port.we.replicate(2)),
                     read.en.eq(port.re & ~port.we), port.rdata.eq(read.data)]
        return m


def line_write_signature(addr_width):
    """The line buffer's write side: per bank an address, a byte and an enable."""
    return wiring.Signature({
        "addr": Out(unsigned(addr_width)).array(BANKS), "data": Out(8).array(BANKS),
        "en": Out(BANKS),
    })


def line_read_signature(addr_width):
    """The line buffer's read side: per bank an address (read when ``en``); ``data`` the bytes
    read the cycle before."""
    return wiring.Signature({
        "addr": Out(unsigned(addr_width)).array(BANKS), "en": Out(1),
        "data": In(8).array(BANKS),
    })


class LineBuffer(wiring.Component):
    """8 banks of ``depth`` bytes.

    Members
    -------
    write : In(line_write_signature(ceil_log2(depth)))
    read : In(line_read_signature(ceil_log2(depth)))
    """

    def __init__(self, depth):
        if not isinstance(depth, int) or depth < 2 or depth & (depth - 1):
            raise ValueError(f"depth must be a power of two of at least 2, got {depth!r}")
        self.depth = depth
        width = ceil_log2(depth)
        super().__init__({"write": In(line_write_signature(width)),
                          "read": In(line_read_signature(width))})

    def elaborate(self, platform):
        m = Module()
        for bank in range(BANKS):
            memory = ram(unsigned(8), self.depth)
            m.submodules[f"bank_{bank}"] = memory
            write, read = memory.write_port(), memory.read_port()
            m.d.comb += [write.addr.eq(self.write.addr[bank]),
                         write.data.eq(self.write.data[bank]),
                         write.en.eq(self.write.en[bank]),
                         read.addr.eq(self.read.addr[bank]), read.en.eq(self.read.en),
                         self.read.data[bank].eq(read.data)]
        return m
