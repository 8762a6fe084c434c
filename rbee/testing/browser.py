"""Headless Chromium for the @ui scenarios: Debian's ``chromium`` driven through ``chromium-driver`` with
selenium (no browser download). The driver is started by hand so that it can be stopped even when the
browser session never comes up; both are stopped by :meth:`Browser.quit`, which the steps register as a
cleanup before starting anything."""

from __future__ import annotations

import shutil
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
DRIVERS = ("chromedriver", "chromium-driver")


def _which(names: tuple[str, ...], what: str) -> str:
    for name in names:
        path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
        if path:
            return path
    raise AssertionError(f"no {what} found (looked for {', '.join(names)}); install Debian's chromium and "
                         "chromium-driver (apt-get install chromium chromium-driver), as .ci/run does")


class Browser:
    def __init__(self, log_path: Path) -> None:
        self.service = Service(_which(DRIVERS, "chromedriver"), log_output=str(log_path))
        self.driver: webdriver.Remote | None = None

    def start(self, width: int = 1400, height: int = 1000) -> webdriver.Remote:
        options = webdriver.ChromeOptions()
        options.binary_location = _which(CHROMIUM, "Chromium")
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--no-first-run", "--disable-extensions", f"--window-size={width},{height}"):
            options.add_argument(arg)
        self.service.start()
        self.driver = webdriver.Remote(self.service.service_url, options=options)
        return self.driver

    def screenshot(self, path: Path) -> bool:
        """Save what the page shows now; False when there is no page to take."""
        if self.driver is None:
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return self.driver.save_screenshot(str(path))
        except Exception:  # noqa: BLE001 - a broken browser must not hide the scenario's own failure
            return False

    def keep_failure(self, log_dir: Path, scenario) -> None:
        """after_scenario: a failed scenario's page, kept beside the processes' logs."""
        if scenario.status.name == "failed":
            name = "".join(c if c.isalnum() else "-" for c in scenario.name)[:80]
            if self.screenshot(log_dir / f"{name}.png"):
                print(f"screenshot kept: {log_dir / name}.png")

    def quit(self) -> None:
        try:
            if self.driver is not None:
                self.driver.quit()
        finally:
            self.driver = None
            self.service.stop()
