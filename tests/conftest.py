import os

import pytest


def pytest_sessionstart(session):
    # Under pytest-xdist (the suite's default, see pyproject.toml) the controller has every
    # YoWASP tool compile itself before the workers start (xdist starts them last in this hook):
    # several workers' first calls of one tool would otherwise write its cache file together.
    config = session.config
    if hasattr(config, "workerinput") or not config.getoption("numprocesses", None):
        return
    from zeroskip.toolchain import prepare_yowasp

    seconds = prepare_yowasp(timeout=900)
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
