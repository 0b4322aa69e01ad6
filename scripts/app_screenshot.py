"""The `resexp app` page in a real headless browser: start `resexp app`, open it in Debian's
chromium (through chromedriver and Selenium), wait for each view's table and figure, screenshot
both views and check the pictures are not blank. Run by hand (CI has no browser):

    apt-get install chromium chromium-driver && pip install selenium
    python scripts/app_screenshot.py [SWEEP_DIR] [-o results/app]

Exit 0 when both views rendered; the PNGs go to the output folder.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from PIL import Image, ImageStat
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as ready
from selenium.webdriver.support.ui import WebDriverWait

WAIT_S = 90
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"  # Debian's; Selenium downloads nothing


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_server(url: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                return
        except OSError:
            time.sleep(0.5)
    sys.exit(f"app_screenshot: the server at {url} did not answer within {WAIT_S} s")


def shows(driver, selector: str, count: int = 1) -> None:
    """Wait until `count` elements match and Streamlit has stopped running the script."""
    WebDriverWait(driver, WAIT_S).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, selector)) >= count)
    WebDriverWait(driver, WAIT_S).until_not(
        ready.presence_of_element_located((By.CSS_SELECTOR, '[data-testid="stStatusWidget"]')))
    time.sleep(1.5)  # charts draw after their element appears


def not_blank(path: Path) -> str:
    """Why the screenshot looks blank, or ''."""
    image = Image.open(path).convert("L")
    spread = ImageStat.Stat(image).stddev[0]
    colours = len(image.getcolors(maxcolors=1 << 16) or range(1 << 16))
    return "" if spread > 10 and colours > 50 else f"{path}: blank (grey-level std {spread:.1f}, {colours} levels)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", nargs="?", default="results/gpu_figure6_16k")
    parser.add_argument("-o", "--out", default="results/app")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://localhost:{port}"
    server = subprocess.Popen(["resexp", "app", "--port", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1500,1250"):
        options.add_argument(flag)
    driver = None
    try:
        wait_for_server(url)
        driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
        driver.get(url)
        shows(driver, '[data-testid="stDataFrame"]')  # the block view's step table
        shows(driver, '[data-testid="stImage"]')  # its grouped bar chart
        block = out / "block_view.png"
        driver.save_screenshot(str(block))

        driver.find_element(By.XPATH, '//label[.//p[text()="Run browser"]]').click()
        field = WebDriverWait(driver, WAIT_S).until(
            ready.element_to_be_clickable((By.CSS_SELECTOR, 'input[aria-label="sweep directory"]')))
        field.send_keys(str(Path(args.sweep_dir).resolve()), Keys.ENTER)
        shows(driver, '[data-testid="stCaptionContainer"]')  # "N runs under DIR": the report is drawn
        shows(driver, '[data-testid="stImage"]')
        shows(driver, '[data-testid="stDataFrame"]')
        browser = out / "run_browser.png"
        driver.save_screenshot(str(browser))
        text = driver.find_element(By.TAG_NAME, "body").text
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        server.wait(timeout=20)
    problems = [p for p in (not_blank(block), not_blank(browser)) if p]
    if "Table 6" not in text or "runs under" not in text:
        problems.append("the run browser shows no Table 6 for the sweep")
    for problem in problems:
        print(f"app_screenshot: {problem}", file=sys.stderr)
    if problems:
        sys.exit(1)
    print(f"wrote {block} and {browser}")


if __name__ == "__main__":
    main()
