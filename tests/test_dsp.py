"""The registered multiply (zeroskip.hdl.dsp) and its ECP5 form (zeroskip.boards.dsp).

``ref_*``: the product of the operands taken two enabled cycles before, computed here from the
inputs the testbench drove. ``rtl_*``: the plain definition (what Verilator simulates in every
design) and the ECP5 definition (a MULT18X18D with its registers on, simulated with the model in
``tests/verilog``), side by side on the same random operands and enables.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from amaranth.hdl import Module, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from zeroskip.boards import dsp as ecp5_dsp
from zeroskip.boards.synth import run_yosys, synthesize
from zeroskip.errors import ZeroskipError
from zeroskip.hdl import dsp
from zeroskip.hdl.verilog import convert
from zeroskip.toolchain import verilator_env, verilator_executable

MODEL = Path(__file__).parent / "verilog" / "ecp5_mult18x18d.v"
CYCLES = 3000

WIDTHS = [(8, 9), (9, 9), (16, 17), (18, 18), (3, 18), (19, 9)]

TESTBENCH = """\
module pair(clk);
  parameter ID = 0;
  parameter AW = 8;
  parameter BW = 8;
  input clk;
  reg en = 1'b0;
  reg signed [AW-1:0] a = 0;
  reg signed [BW-1:0] b = 0;
  wire signed [AW+BW-1:0] p_plain, p_ecp5;
  integer seed = ID;
  plain_product #(.A_WIDTH(AW), .B_WIDTH(BW)) plain (
    .clk(clk), .en(en), .a(a), .b(b), .p(p_plain));
  ecp5_product #(.A_WIDTH(AW), .B_WIDTH(BW)) ecp5 (
    .clk(clk), .en(en), .a(a), .b(b), .p(p_ecp5));
  // Between edges: the inputs the last edge took and the outputs after it, then the inputs
  // for the next edge.
  always @(negedge clk) begin
    $display("%0d %0d %0d %0d %0d %0d", ID, en, a, b, p_plain, p_ecp5);
    en <= ($random(seed) & 3) != 0;
    a <= (($random(seed) & 7) == 0) ? {1'b1, {(AW-1){1'b0}}} :
         (($random(seed) & 15) == 0) ? {1'b0, {(AW-1){1'b1}}} : AW'($random(seed));
    b <= (($random(seed) & 7) == 0) ? {1'b1, {(BW-1){1'b0}}} : BW'($random(seed));
  end
endmodule

module tb;
  reg clk = 1'b0;
  integer cycle;
@PAIRS@
  initial begin
    for (cycle = 0; cycle < @CYCLES@; cycle = cycle + 1) begin
      #5 clk = 1'b1;
      #5 clk = 1'b0;
    end
    #1 $finish;
  end
endmodule
"""


def ref_products(rows):
    """For each row of ``(en, a, b)`` an edge took, the product registered after that edge
    (None until two enabled edges have passed)."""
    registered, product, expected = None, None, []
    for en, a, b in rows:
        if en:
            if registered is not None:
                product = registered[0] * registered[1]
            registered = (a, b)
        expected.append(product)
    return expected


def rtl_products(tmp_path):
    """Simulate both definitions side by side for each pair of :data:`WIDTHS`: per pair the
    rows ``(en, a, b, plain p, ECP5 p)`` of :data:`CYCLES` edges."""
    plain = dsp.VERILOG.replace(f"module {dsp.MODULE}(", "module plain_product(")
    ecp5 = ecp5_dsp.simulation_verilog().replace(f"module {dsp.MODULE}(",
                                                 "module ecp5_product(")
    pairs = "\n".join(f"  pair #(.ID({index + 1}), .AW({aw}), .BW({bw})) pair_{index} (clk);"
                      for index, (aw, bw) in enumerate(WIDTHS))
    (tmp_path / "tb.v").write_text(
        TESTBENCH.replace("@PAIRS@", pairs).replace("@CYCLES@", str(CYCLES)) + plain + ecp5)
    build = tmp_path / "obj"
    # Verilator's timing support (the testbench's delays) needs C++ coroutines.
    subprocess.run([str(verilator_executable()), "--binary", "-Wno-fatal",
                    "-CFLAGS", "-fcoroutines", "--top-module", "tb", "-Mdir", str(build),
                    "-o", "tb", str(tmp_path / "tb.v"), str(MODEL)],
                   check=True, capture_output=True, env=verilator_env(), timeout=600)
    run = subprocess.run([str(build / "tb")], check=True, capture_output=True, text=True,
                         timeout=120)
    rows = {index: [] for index in range(len(WIDTHS))}
    for line in run.stdout.splitlines():
        fields = line.split()
        if len(fields) == 6:
            index, *row = (int(field) for field in fields)
            rows[index - 1].append(tuple(row))
    return rows


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    return rtl_products(tmp_path_factory.mktemp("dsp"))


@pytest.mark.parametrize("index", range(len(WIDTHS)), ids=[f"{a}x{b}" for a, b in WIDTHS])
def test_ecp5_product_matches_plain_and_reference(simulated, index):
    aw, bw = WIDTHS[index]
    rows = simulated[index]
    assert len(rows) == CYCLES
    expected = ref_products([(en, a, b) for en, a, b, _, _ in rows])
    checked = 0
    for cycle, (want, (_, _, _, plain_p, ecp5_p)) in enumerate(zip(expected, rows)):
        if want is None:
            continue
        assert (plain_p, ecp5_p) == (want, want), f"edge {cycle}"
        checked += 1
    assert checked > CYCLES // 2
    # The operands reached the extremes of their widths, and the enable held them.
    assert any(a == -(1 << (aw - 1)) for _, a, _, _, _ in rows)
    assert any(a == (1 << (aw - 1)) - 1 for _, a, _, _, _ in rows)
    assert any(b == -(1 << (bw - 1)) for _, _, b, _, _ in rows)
    assert any(en == 0 for en, _, _, _, _ in rows)


class _Product(wiring.Component):
    """A registered product of an unsigned and a signed operand, with an enable."""

    def __init__(self):
        super().__init__({"a": In(unsigned(8)), "b": In(signed(9)), "en": In(1),
                          "p": Out(signed(18))})

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.p.eq(dsp.RegisteredProduct.of(m, self.a, self.b, en=self.en))
        return m


def test_registered_product_in_the_amaranth_simulator():
    """Plain logic outside Verilog conversion: two enabled cycles, held while disabled."""
    top = _Product()
    seen = []

    async def bench(ctx):
        for a, b, en in [(255, -256, 1), (3, 5, 1), (7, 7, 0), (1, 1, 1), (2, 2, 1)]:
            ctx.set(top.a, a)
            ctx.set(top.b, b)
            ctx.set(top.en, en)
            await ctx.tick()
            seen.append(ctx.get(top.p))

    sim = Simulator(top)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    # Edge 3 is disabled; edge 4 registers (3, 5)'s product, edge 5 (1, 1)'s.
    assert seen[1] == 255 * -256
    assert seen[2] == seen[1]
    assert seen[3:] == [15, 1]


def test_verilog_defines_the_module_once_and_ecp5_swaps_it():
    text = convert(_Product(), "top")
    assert text.count(f"module {dsp.MODULE}(") == 1
    assert text.endswith(dsp.VERILOG)
    assert f"\n  {dsp.MODULE} " in text
    assert ecp5_dsp.for_family(text, "ice40") == text
    ecp5 = ecp5_dsp.for_family(text, "ecp5")
    assert "MULT18X18D" in ecp5 and dsp.VERILOG not in ecp5
    assert ecp5.count(f"module {dsp.MODULE}(") == 1


def test_ecp5_swap_refuses_a_text_without_the_definition():
    text = convert(_Product(), "top").replace(dsp.VERILOG, "")
    with pytest.raises(ZeroskipError, match=dsp.MODULE):
        ecp5_dsp.for_family(text, "ecp5")


def test_yosys_puts_the_registers_in_the_dsp_block(tmp_path):
    """On the ECP5 the operand and product registers are the MULT18X18D's (no flip-flop is
    left), set as :data:`zeroskip.boards.dsp.SETTINGS` says; on the iCE40,
    ``synth_ice40 -dsp`` packs them into the SB_MAC16 itself."""
    text = convert(_Product(), "top")
    ecp5 = synthesize(text, "top", "ecp5")
    assert (ecp5.dsps, ecp5.ffs) == (1, 0)
    ice40 = synthesize(text, "top", "ice40")
    assert ice40.dsps == 1
    (tmp_path / "design.v").write_text(ecp5_dsp.for_family(text, "ecp5"))
    script = "\n".join(["read_verilog design.v", "synth_ecp5 -top top",
                         *ecp5_dsp.after_synthesis("ecp5"), "write_json netlist.json", ""])
    run_yosys(tmp_path, script, "yosys", "synth_ecp5 of top", 600)
    netlist = json.loads((tmp_path / "netlist.json").read_text())
    cells = [cell for cell in netlist["modules"]["top"]["cells"].values()
             if cell["type"] == "MULT18X18D"]
    assert len(cells) == 1
    assert {name: cells[0]["parameters"].get(name) for name in ecp5_dsp.SETTINGS} == \
        ecp5_dsp.SETTINGS
