import pytest


@pytest.fixture(scope="session")
def digits_demo():
    """The digits demo at its defaults (trained once per test session): result and graph."""
    from zeroskip import demo

    return demo.run(demo.DemoSettings())
