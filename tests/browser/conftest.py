"""Fixtures of the browser tests; the code is in harness.py (importable by the tests)."""

from harness import browser, fake_hn, start_server  # noqa: F401 (pytest finds fixtures here)

import pytest  # noqa: E402

from harness import ARTIFACTS  # noqa: E402


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """On a failure, saves what the browser showed as `failure-<test>.png`."""
    report = yield
    driver = item.funcargs.get("browser") or item.funcargs.get("page")
    if report.failed and report.when == "call" and driver is not None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / f"failure-{item.name}.png"))
    return report


def pytest_sessionstart(session):
    """Artifacts are those of this run only."""
    if ARTIFACTS.is_dir():
        for old in [*ARTIFACTS.glob("*.png"), *ARTIFACTS.glob("*.log")]:
            old.unlink()
