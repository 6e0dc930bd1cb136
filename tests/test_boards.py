"""Board tops and `zeroskip build-board`: PLL calculators, the board registry, option errors,
elaboration, and (synth, slow) real bitstreams for the iCEBreaker and the ULX3S."""

import gc
import hashlib
import json
import subprocess
import sys
import warnings

import pytest
import torch
from amaranth_boards.icebreaker import ICEBreakerPlatform
from amaranth_boards.ulx3s import ULX3S_85F_Platform
from torch import nn

import zeroskip
from zeroskip.boards import boards, get_board
from zeroskip.boards.board import check_board_options
from zeroskip.boards.icebreaker import ICEBreakerTop
from zeroskip.boards.pll import CLOCK_TOLERANCE, ecp5_pll, ice40_pll
from zeroskip.boards.ulx3s import ULX3STop
from zeroskip.errors import ZeroskipError
from zeroskip.parts import PARTS


def zeroskip_command(*args):
    return subprocess.run([sys.executable, "-m", "zeroskip", *map(str, args)],
                          check=False, capture_output=True, text=True, timeout=1800)


def assert_one_line(result, returncode, prefix, *fragments):
    assert result.returncode == returncode, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def tiny_build(tmp_path_factory):
    """A compiled one-layer net (8 inputs, 3 logits): the smallest thing a board can run."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 3)).eval()
    graph = zeroskip.export(model, torch.rand(8, 8))
    design = zeroskip.compile(graph, lanes=1)
    build = tmp_path_factory.mktemp("boards") / "build"
    design.write(build)
    return design, build


# --- PLL calculators ---------------------------------------------------------------------------


@pytest.mark.parametrize("f_in, f_out, divr, divf, divq, filter_range", [
    # What `icepll -i F_IN -o F_OUT` prints.
    (12, 96, 0, 63, 3, 1),
    (12, 60, 0, 79, 4, 1),
    (48, 100, 2, 49, 3, 1),
    (48, 150, 1, 24, 2, 2),
    (12, 24, 0, 63, 5, 1),
])
def test_ice40_pll_chooses_what_icepll_does(f_in, f_out, divr, divf, divq, filter_range):
    pll = ice40_pll(f_in, f_out)
    assert (pll.divr, pll.divf, pll.divq, pll.filter_range) == (divr, divf, divq, filter_range)
    assert pll.f_out == f_out == f_in / (divr + 1) * (divf + 1) / 2 ** divq


@pytest.mark.parametrize("f_in, f_out, clki_div, clkfb_div, clkop_div", [
    # What `ecppll -i F_IN -o F_OUT` gives; 12 -> 48 ties VCOs of 576 and 624 MHz (the first
    # found is kept), 25 -> 65 needs an input divider.
    (25, 50, 1, 2, 12),
    (25, 100, 1, 4, 6),
    (12, 48, 1, 4, 12),
    (25, 65, 5, 13, 9),
])
def test_ecp5_pll_chooses_what_ecppll_does(f_in, f_out, clki_div, clkfb_div, clkop_div):
    pll = ecp5_pll(f_in, f_out)
    assert (pll.clki_div, pll.clkfb_div, pll.clkop_div) == (clki_div, clkfb_div, clkop_div)
    assert pll.f_out == pytest.approx(f_out) and pll.f_out == f_in / clki_div * clkfb_div
    assert 400 <= pll.f_vco <= 800 and pll.clkop_cphase == clkop_div // 2


@pytest.mark.parametrize("f_out", [16.5, 18, 33, 47.25, 100, 200])
def test_ice40_settings_are_within_the_pll_limits(f_out):
    pll = ice40_pll(12, f_out)
    assert abs(pll.f_out - f_out) <= CLOCK_TOLERANCE * f_out
    assert 10 <= pll.f_pfd <= 133 and 533 <= pll.f_vco <= 1066


@pytest.mark.parametrize("calculator, f_in, f_out, nearest", [
    (ice40_pll, 12, 300, "nearest achievable: 270.000 MHz"),
    (ice40_pll, 12, 16, "nearest achievable: 16.125 MHz"),  # the PLL's lowest output
    (ice40_pll, 12, 33.3, "nearest achievable: 33.000 MHz and 33.750 MHz"),
    (ecp5_pll, 25, 500, "nearest achievable: 400.000 MHz"),
])
def test_unreachable_clock_names_the_achievable_ones(calculator, f_in, f_out, nearest):
    with pytest.raises(ZeroskipError, match="not reachable") as error:
        calculator(f_in, f_out)
    assert nearest in str(error.value) and "--clock" in str(error.value)


def test_the_registry_names_every_board_and_refuses_others():
    assert {name: spec.top for name, spec in boards().items()} == {
        "icebreaker": ICEBreakerTop, "ulx3s": ULX3STop}
    assert get_board("ulx3s") is boards()["ulx3s"]
    with pytest.raises(ZeroskipError, match=r"--board: unknown board 'de10'; known: icebreaker, "
                                            r"ulx3s$"):
        get_board("de10")


def test_a_large_design_routes_with_router2_on_the_ecp5_board():
    # As `zeroskip synth` chooses (router1 did not converge on ResNet-8 at 60 % of the
    # ECP5-85F's LUT4 sites); the UP5K keeps router1 and its placer option whatever the size.
    ulx3s, icebreaker = get_board("ulx3s"), get_board("icebreaker")
    assert ulx3s.part == "ecp5-85k" and icebreaker.part == "ice40-up5k"
    sites = PARTS["ecp5-85k"].capacity["luts"]
    assert "router2" not in ulx3s.nextpnr_options(int(0.55 * sites))
    assert ulx3s.nextpnr_options(int(0.56 * sites)) == "--router router2"
    for luts in (0, 5280):
        assert icebreaker.nextpnr_options(luts) == "--placer-heap-timingweight 30"


def test_board_options_are_checked_before_any_build():
    spec, clock = check_board_options("ulx3s")
    assert spec.name == "ulx3s" and clock == spec.default_clock_mhz
    with pytest.raises(ZeroskipError, match="--baud"):
        check_board_options("icebreaker", 16.5, 10_000_000)
    with pytest.raises(ZeroskipError, match="--clock must be a positive"):
        check_board_options("icebreaker", 0.0)


# --- the command's bad input -------------------------------------------------------------------


@pytest.mark.parametrize("args, fragments", [
    (["--board", "de10"], ["--board", "'de10'", "icebreaker, ulx3s"]),
    (["--board", "icebreaker", "--clock", "300"], ["--clock", "270.000 MHz"]),
    (["--board", "ulx3s", "--baud", "20000000"], ["--baud", "clocks per bit"]),
])
def test_bad_options_are_one_line_exit_2(tiny_build, args, fragments):
    _, build = tiny_build
    result = zeroskip_command("build-board", build, *args)
    assert_one_line(result, 2, "zeroskip: error: ", *fragments)
    assert not list(build.glob("*board-*"))


def test_not_a_build_directory_is_one_line_exit_2(tmp_path):
    result = zeroskip_command("build-board", tmp_path, "--board", "ulx3s")
    assert_one_line(result, 2, "zeroskip: error: ", "not a zeroskip build directory")


# --- board tops --------------------------------------------------------------------------------


@pytest.mark.parametrize("top_class, platform_class, clock, pll_cell, parameter", [
    (ICEBreakerTop, ICEBreakerPlatform, 48, "SB_PLL40_PAD", "DIVF"),
    (ULX3STop, ULX3S_85F_Platform, 75, "EHXPLLL", "CLKFB_DIV"),
])
def test_board_top_elaborates_with_pll_uart_and_leds(tiny_build, top_class, platform_class,
                                                     clock, pll_cell, parameter):
    design, _ = tiny_build
    top = top_class(design, clock_mhz=clock, baud=115200)
    assert top.clock_hz == clock * 1e6 and top.link.clk_freq == clock * 1_000_000
    plan = platform_class().build(top, name=design.top, do_build=False)
    rtlil = plan.files[f"{design.top}.il"]
    assert f"cell \\{pll_cell}" in rtlil and f"parameter \\{parameter}" in rtlil
    constraints = plan.files[f"{design.top}.pcf" if pll_cell.startswith("SB") else
                             f"{design.top}.lpf"]
    assert "uart_0__rx" in constraints and "uart_0__tx" in constraints
    assert "led_0" in constraints and "led_1" in constraints


def test_a_net_the_link_cannot_carry_is_bad_input():
    model = nn.Sequential(nn.Linear(8, 300)).eval()  # the link's class byte holds 255 classes
    design = zeroskip.compile(zeroskip.export(model, torch.rand(4, 8)), lanes=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing left unused behind the error
        with pytest.raises(ZeroskipError, match="zeroskip_net: .*classes"):
            ULX3STop(design, clock_mhz=50)
        gc.collect()


# --- real bitstreams ---------------------------------------------------------------------------


@pytest.mark.synth
@pytest.mark.slow
@pytest.mark.parametrize("board, suffix, smallest", [
    # An UP5K image is a fixed 104090 bytes; an ECP5-85F one is compressed, a few hundred KB.
    ("icebreaker", "bin", 100_000),
    ("ulx3s", "bit", 100_000),
])
def test_build_board_writes_a_bitstream_and_its_record(tiny_build, board, suffix, smallest):
    design, build = tiny_build
    result = zeroskip_command("build-board", build, "--board", board)
    assert result.returncode == 0, result.stdout + result.stderr
    out = build / f"board-{board}"
    record = json.loads((out / "board.json").read_text())
    bitstream = out / f"{design.top}.{suffix}"
    data = bitstream.read_bytes()
    assert smallest <= len(data) <= 4_000_000 and record["bitstream_bytes"] == len(data)
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    assert record["bitstream"] == bitstream.name and record["board"] == board
    assert record["fmax_mhz"] >= record["clock_mhz"] == check_board_options(board)[1]
    assert record["baud"] == 115200
    assert any(r["used"] for r in record["resources"].values())
    for log in (f"{design.top}.rpt", f"{design.top}.tim", "nextpnr-report.json"):
        assert (out / log).is_file()
    # The part's nextpnr options (zeroskip.parts.ICE40_NEXTPNR_OPTIONS on the iCE40).
    script = (out / f"build_{design.top}.sh").read_text()
    assert ("--placer-heap-timingweight 30" in script) == (board == "icebreaker")
    assert "router2" not in script  # a small design: router1, which clocks it higher
    assert not list(build.glob(".board-*")) and not (build / f"board-{board}.failed").exists()
    assert f"{out / bitstream.name}" in result.stdout and "fmax" in result.stdout


@pytest.mark.synth
@pytest.mark.slow
def test_missed_timing_is_one_line_exit_1_and_no_bitstream(tmp_path):
    model = nn.Sequential(nn.Linear(4, 2)).eval()
    design = zeroskip.compile(zeroskip.export(model, torch.rand(4, 4)), lanes=1)
    build = tmp_path / "build"
    design.write(build)
    result = zeroskip_command("build-board", build, "--board", "icebreaker", "--clock", "150")
    assert_one_line(result, 1, "zeroskip: build failed: ", "misses timing", "fmax",
                    "< clock 150.000 MHz")
    assert not (build / "board-icebreaker").exists() and not list(build.glob(".board-*"))
    failed = build / "board-icebreaker.failed"
    assert (failed / f"{design.top}.tim").is_file()
    assert not list(failed.glob("*.bin")) and not list(failed.glob("*.asc"))
