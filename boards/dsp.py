"""The registered multiplies as the ECP5's DSP blocks hold them.

Every multiply of the conv lanes and the requantizers is an instance of
:data:`zeroskip.hdl.dsp.MODULE`, defined once after the design's modules by
:data:`zeroskip.hdl.dsp.VERILOG`: operand registers, a signed multiply, a product register, all
enabled by ``en``. Yosys maps a multiply onto a MULT18X18D with its registers off and leaves the
registers in the fabric, so the multiply and the routes to and from the DSP block, which sits in
one of a few rows, make one path. :func:`for_family` swaps that definition, for synthesis on the
ECP5, for :data:`ECP5_VERILOG`: the same ports, parameters and cycle-by-cycle behaviour, as one
MULT18X18D with its A, B and output registers on (clock ``CLK0``, enable ``CE0``, no pipeline
register: :data:`SETTINGS`, given after synthesis by :func:`after_synthesis`), whose timing
nextpnr knows (``MULT18X18D_REGS_ALL``). Operands wider than 18 bits
keep the plain definition. The registers are not reset (nor are the plain definition's): they
hold data whose validity the engines track beside them.
"""

from __future__ import annotations

from ..errors import ZeroskipError
from ..hdl import dsp

__all__ = ["ATTRIBUTE", "ECP5_VERILOG", "SETTINGS", "after_synthesis", "for_family",
           "simulation_verilog"]


#: The MULT18X18D's settings: A, B and output registers on ``CLK0``, enabled by ``CE0``,
#: reset by ``RST0`` (tied low); no pipeline register; no global reset.
SETTINGS = {
    **{f"REG_{register}_{port}": value for register in ("INPUTA", "INPUTB", "OUTPUT")
       for port, value in (("CLK", "CLK0"), ("CE", "CE0"), ("RST", "RST0"))},
    "REG_INPUTC_CLK": "NONE", "REG_PIPELINE_CLK": "NONE", "GSR": "DISABLED",
    "RESETMODE": "SYNC", "SOURCEB_MODE": "B_SHIFT", "MULT_BYPASS": "DISABLED",
}

#: The attribute marking the MULT18X18D of :data:`ECP5_VERILOG`.
ATTRIBUTE = "zeroskip_registered_dsp"


def _bits(port, net, count):
    return "".join(f"    .{port}{index}({net}[{index}]),\n" for index in range(count))


def _ties(ports, value):
    return "".join(f"    .{port}({value}),\n" for port in ports)


#: The definition of :data:`zeroskip.hdl.dsp.MODULE` for the ECP5: a MULT18X18D where both
#: operands have at most 18 bits (sign-extended to 18, multiplied signed), else the plain
#: registers and multiply. The MULT18X18D is written without its settings, which
#: :func:`after_synthesis` gives it: Yosys's Verilog frontend elaborates a parameterised
#: instance of a black box as a module of its own, derived again once the cell library is read,
#: and ``synth_ecp5`` then rebuilt the whole top from its syntax tree and failed.
ECP5_VERILOG = dsp.HEADER + f"""\
  generate
  if (A_WIDTH <= 18 && B_WIDTH <= 18) begin : block
  wire signed [17:0] a_18 = a;
  wire signed [17:0] b_18 = b;
  wire [35:0] p_36;
  (* {ATTRIBUTE} *)
  MULT18X18D mult (
{_bits("A", "a_18", 18)}{_bits("B", "b_18", 18)}{_ties([f"C{i}" for i in range(18)], "1'b0")}\
{_ties(["SIGNEDA", "SIGNEDB"], "1'b1")}{_ties(["SOURCEA", "SOURCEB"], "1'b0")}\
    .CLK0(clk),
{_ties(["CLK1", "CLK2", "CLK3"], "1'b0")}    .CE0(en),
{_ties(["CE1", "CE2", "CE3"], "1'b1")}{_ties(["RST0", "RST1", "RST2", "RST3"], "1'b0")}\
{_bits("P", "p_36", 36).rstrip().rstrip(",")}
  );
  assign p = p_36[A_WIDTH+B_WIDTH-1:0];
  end else begin : fabric
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
  end
  endgenerate
endmodule
"""


def after_synthesis(family):
    """The Yosys commands that follow ``synth_<family>`` on a design :func:`for_family` wrote:
    on the ECP5 the MULT18X18Ds of :data:`ECP5_VERILOG` get their :data:`SETTINGS`."""
    if family != "ecp5":
        return []
    settings = " ".join(f'-set {name} "{value}"' for name, value in SETTINGS.items())
    return [f"setparam {settings} t:MULT18X18D a:{ATTRIBUTE} %i"]


def simulation_verilog():
    """:data:`ECP5_VERILOG` with the settings written on its MULT18X18D, as the netlist holds
    it after :func:`after_synthesis`: for a simulator with a MULT18X18D model."""
    settings = ", ".join(f'.{name}("{value}")' for name, value in SETTINGS.items())
    return ECP5_VERILOG.replace(f"  (* {ATTRIBUTE} *)\n  MULT18X18D mult (",
                                f"  MULT18X18D #({settings}) mult (")


def for_family(verilog_text, family):
    """``verilog_text`` (one design as :func:`zeroskip.hdl.verilog.convert` writes it) with the
    multiplies' definition for ``family``: on the ECP5 :data:`ECP5_VERILOG`, elsewhere as it
    is."""
    if family != "ecp5" or f"\n  {dsp.MODULE} " not in verilog_text:
        return verilog_text
    if verilog_text.count(dsp.VERILOG) != 1:
        raise ZeroskipError(f"the Verilog instantiates {dsp.MODULE} but does not end with its "
                            f"one definition as zeroskip writes it")
    return verilog_text.replace(dsp.VERILOG, ECP5_VERILOG)
