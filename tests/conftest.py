import pytest


@pytest.fixture(scope="session")
def digits_demo():
    """The digits demo at its defaults (trained once per test session): result and graph."""
    from zeroskip import demo

    return demo.run(demo.DemoSettings())


@pytest.fixture(scope="session")
def verilator_build_root(tmp_path_factory):
    """One Verilator build directory per test session; models are cached in it by content."""
    return tmp_path_factory.mktemp("verilator")
