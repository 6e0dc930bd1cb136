"""``zeroskip report BUILD --html``: one self-contained page, every plot rendered in Chromium.

One small classifier is compiled for a part (``target``: the resource model's section) with
calibration inputs (the folding's estimates), co-simulated once under Verilator (``sim.json``),
and given a ``synth-<part>.json`` in the format ``zeroskip synth`` writes (its numbers stand in
for a Yosys / nextpnr run, which takes minutes and is tested in tests/test_synth.py). The page is
then loaded in a real headless Chromium (Debian's ``chromium``), which must decode every image.
"""

import base64
import html
import json
import re
import shutil
import subprocess

import numpy as np
import pytest

import zeroskip
from zeroskip import cli, demo
from zeroskip.boards import synth
from zeroskip.build import SIM_FILE, open_build
from zeroskip.simulation import SimulationSummary
from zeroskip.testbench import build_tb

from engine_kinds import classifier_graph

# Appended to a copy of the page: lists each image's decoded width once the page has loaded.
PROBE = """<script>addEventListener("load", () => {
  const out = document.createElement("pre");
  out.id = "widths";
  out.textContent = Array.from(document.images, image => image.complete ? image.naturalWidth
                                                                        : -1).join(",");
  document.body.appendChild(out);
});</script>"""


def chromium_widths(page, tmp_path):
    """The natural width of every image of ``page`` as headless Chromium decoded it."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install -y chromium; .ci/run "
                    "installs it where it may)")
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    result = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                             "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
                            capture_output=True, text=True, timeout=180)
    found = re.search(r'<pre id="widths">([^<]*)</pre>', result.stdout)
    assert found, result.stdout[-2000:] + result.stderr[-2000:]
    return [int(width) for width in found.group(1).split(",") if width]


def images(text):
    """The PNGs inlined in the page, decoded; the page must reference nothing else."""
    sources = re.findall(r'src="([^"]*)"', text)
    assert not re.search(r'(href|src)="(?!data:)', text)
    pngs = [base64.b64decode(source.removeprefix("data:image/png;base64,"))
            for source in sources]
    assert all(source.startswith("data:image/png;base64,") for source in sources)
    assert all(png.startswith(b"\x89PNG\r\n\x1a\n") for png in pngs)
    return pngs


@pytest.fixture(scope="module")
def design():
    graph = classifier_graph(np.random.default_rng(3))
    calibration = build_tb.default_inputs(graph, 16, seed=1)
    return zeroskip.compile(graph, calibration=calibration, target="ice40-up5k")


@pytest.fixture(scope="module")
def full_build(design, tmp_path_factory, verilator_build_root):
    """The build with a co-simulation (recorded as the demo records its own) and a synthesis
    report."""
    path = tmp_path_factory.mktemp("report") / demo.BUILD_NAMES[True]
    design.write(path)
    x = np.load(path / "tb" / "inputs.npy")
    result = design.simulate(x, idle_probability=0.2, build_root=verilator_build_root)
    labels = np.arange(len(x)) % 4
    demo._record_simulations(path.parent, {True: design}, x, labels, {True: result})
    recorded = open_build(path).read_result(SIM_FILE)
    assert recorded == json.loads(json.dumps(
        SimulationSummary.of(design, x, result, labels).to_dict()))
    assert recorded["latencies"] == result.latency_cycles.tolist()
    part = synth.target("ice40-up5k")
    report = synth.BoardReport(target=part.name, device=part.device, package=part.package,
                               top=design.top, luts=2900, ffs=2500, dsps=5, brams=20, spram=0,
                               carries=300, capacity=dict(part.capacity),
                               wrapper={key: 0 for key in synth.RESOURCES},
                               target_mhz=part.default_mhz, fmax_mhz=41.5)
    (path / "synth-ice40-up5k.json").write_text(json.dumps(report.to_dict()))
    return path


def report_page(capsys, build, output):
    code = cli.main(["report", str(build), "--html", str(output)])
    out, err = capsys.readouterr()
    assert code == 0 and err == "", err
    assert f"wrote {output}" in out
    return output.read_text()


@pytest.mark.verilator
def test_the_page_holds_every_plot_and_chromium_renders_them(full_build, design, tmp_path,
                                                              capsys):
    page = tmp_path / "report.html"
    text = report_page(capsys, full_build, page)
    # Layers, cycles, timeline, the synthesis's resources, the target's resource model.
    pngs = images(text)
    assert len(pngs) == 5
    simulation = json.loads((full_build / SIM_FILE).read_text())
    assert f"measured interval {simulation['interval_cycles']:.0f} cycles" in text
    slowest = max(design.estimates, key=lambda estimate: estimate.cycles)
    assert html.escape(f"layer {slowest.name!r}, {slowest.bound}-bound") in text
    assert "Fmax 41.5 MHz" in text and "ice40-up5k (the compile&#x27;s resource model" in text
    assert "8/8 inferences bit-exact" in text
    widths = chromium_widths(page, tmp_path)
    assert len(widths) == 5 and all(width > 0 for width in widths), widths


def test_a_build_without_results_says_what_to_run(design, tmp_path, capsys):
    build = tmp_path / "build"
    design.write(build)
    text = report_page(capsys, build, build / "report.html")
    assert len(images(text)) == 3  # the layers, the estimated cycles, the target's model
    assert "no co-simulation recorded (sim.json): run `zeroskip sim`" in text
    assert "no synthesis recorded" in text
    open_build(build)  # a page written beside the build's files leaves it whole


def test_a_sequential_build_gets_its_page_with_the_engines_lanes(design, tmp_path, capsys):
    """Its layers list no lanes of their own: each runs on the one engine's."""
    sequential = zeroskip.compile(design.graph, 2, architecture="sequential",
                                  calibration=build_tb.default_inputs(design.graph, 16, seed=1))
    build = tmp_path / "build"
    sequential.write(build)
    text = report_page(capsys, build, build / "report.html")
    assert len(images(text)) == 2  # the layers, the estimated cycles
    assert "no co-simulation recorded (sim.json): run `zeroskip sim`" in text


def test_an_html_path_that_cannot_be_written_is_refused_first(design, tmp_path, capsys):
    build = tmp_path / "build"
    design.write(build)
    code = cli.main(["report", str(build), "--html", str(tmp_path / "missing" / "r.html")])
    _, err = capsys.readouterr()
    assert code == 2 and err.startswith("zeroskip: error: --html: directory")
