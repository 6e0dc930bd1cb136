"""A multiply between registers, as a DSP block holds one.

:class:`RegisteredProduct` is the multiply of the conv lanes and the requantizers: its operands'
registers and its product's register are the ones a DSP block has inside it. In the Amaranth
simulator it is plain logic. Written as Verilog (:func:`zeroskip.hdl.verilog.convert`) it is an
instance of the module ``zeroskip_dsp_product`` (:data:`MODULE`), whose definition,
:data:`VERILOG`, follows the design's modules: Verilator simulates it and Yosys maps it like any
multiply (an iCE40's ``synth_ice40 -dsp`` packs the registers into the SB_MAC16 itself). Yosys
does not pack registers into an ECP5 MULT18X18D, so the ECP5 synthesis puts the block in by
hand, swapping that one definition for one instance of a MULT18X18D with its input and output
registers on (:mod:`zeroskip.boards.dsp`): the routes to and from a DSP block are then paths of
their own rather than parts of one path through the multiply (13.5 ns on an ECP5-85F where the
block sat far from its lane).
"""

from __future__ import annotations

import contextlib
import contextvars

from amaranth.hdl import Cat, ClockSignal, Const, Instance, Module, Signal, Value, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["HEADER", "MODULE", "VERILOG", "RegisteredProduct", "as_instances"]

#: The Verilog module every :class:`RegisteredProduct` instantiates.
MODULE = "zeroskip_dsp_product"

#: The ports and parameters of :data:`MODULE`, which each of its definitions starts with.
HEADER = f"""\
module {MODULE}(clk, en, a, b, p);
  parameter A_WIDTH = 18;
  parameter B_WIDTH = 18;
  input clk;
  input en;
  input signed [A_WIDTH-1:0] a;
  input signed [B_WIDTH-1:0] b;
  output signed [A_WIDTH+B_WIDTH-1:0] p;
"""

#: The definition of :data:`MODULE`: ``p`` the signed product of ``a`` and ``b`` registered
#: where ``en`` is set, two such cycles after them (a signed multiply in a context as wide as
#: the product, which holds any product of the operands).
VERILOG = HEADER + """\
  reg signed [A_WIDTH-1:0] a_r;
  reg signed [B_WIDTH-1:0] b_r;
  reg signed [A_WIDTH+B_WIDTH-1:0] p_r;
  always @(posedge clk)
    if (en) begin
      a_r <= a;
      b_r <= b;
      p_r <= a_r * b_r;
    end
  assign p = p_r;
endmodule
"""

_AS_INSTANCES = contextvars.ContextVar("zeroskip_dsp_as_instances", default=False)


@contextlib.contextmanager
def as_instances():
    """Within it, a :class:`RegisteredProduct` elaborates to an instance of :data:`MODULE`
    (Verilog conversion); outside, to plain logic (the Amaranth simulator)."""
    token = _AS_INSTANCES.set(True)
    try:
        yield
    finally:
        _AS_INSTANCES.reset(token)


class RegisteredProduct(wiring.Component):
    """``p = a * b``, signed, two enabled cycles after ``a`` and ``b``.

    Members
    -------
    a : In(signed(a_width)), b : In(signed(b_width))
        The operands, taken into registers where ``en`` is set.
    en : In(1)
        Clock enable of all three registers (1: every cycle).
    p : Out(signed(a_width + b_width))
        The product of the operands registered two cycles of ``en`` before.

    Latency: 2 cycles of ``en``. The registers have no reset: what they hold is data, whose
    validity the user tracks beside them (a DSP block's registers are reset by a port of their
    own, which is left off).
    """

    def __init__(self, a_width, b_width):
        for name, width in (("a_width", a_width), ("b_width", b_width)):
            if not isinstance(width, int) or isinstance(width, bool) or width < 1:
                raise ValueError(f"{name} must be a positive integer, got {width!r}")
        super().__init__({"a": In(signed(a_width)), "b": In(signed(b_width)),
                          "en": In(1, init=1), "p": Out(signed(a_width + b_width))})

    @staticmethod
    def of(m, a, b, *, en=1, name="dsp_product"):
        """Add a :class:`RegisteredProduct` of ``a`` and ``b`` (values of either signedness, an
        unsigned one gaining a zero sign bit, or integers) to ``m`` as ``name``, and return its
        ``p``."""
        operands = []
        for value in (a, b):
            value = Value.cast(value)
            if not value.shape().signed:
                value = Cat(value, Const(0, 1)).as_signed()
            operands.append(value)
        product = RegisteredProduct(len(operands[0]), len(operands[1]))
        m.submodules[name] = product
        m.d.comb += [product.a.eq(operands[0]), product.b.eq(operands[1]), product.en.eq(en)]
        return product.p

    def elaborate(self, platform):
        m = Module()
        if _AS_INSTANCES.get():
            m.submodules.product = Instance(
                MODULE, p_A_WIDTH=len(self.a), p_B_WIDTH=len(self.b), i_clk=ClockSignal(),
                i_en=self.en, i_a=self.a, i_b=self.b, o_p=self.p)
            return m
        a, b = Signal.like(self.a, reset_less=True), Signal.like(self.b, reset_less=True)
        p = Signal.like(self.p, reset_less=True)
        with m.If(self.en):
            m.d.sync += [a.eq(self.a), b.eq(self.b), p.eq(a * b)]
        m.d.comb += self.p.eq(p)
        return m
