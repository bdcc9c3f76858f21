"""larosa-server's chat page in a real headless browser (Debian's chromium, driven by chromedriver
through selenium): it streams a greedy reply equal to the Python API's, and the screenshot shows the
conversation."""
from __future__ import annotations

import shutil

import pytest

from larosa.runtime import Model, create_chat_completion
from server_helpers import thread_server

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER),
                                reason="no chromium/chromedriver (tools/setup.sh installs Debian's)")
QUESTION = "What is the capital of France?"
WIDTH, HEIGHT = 1000, 700


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={WIDTH},{HEIGHT}", "--force-device-scale-factor=1"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)   # no Selenium Manager download
    yield driver
    driver.quit()


def test_chat_page_streams_a_reply(smollm2_q8, browser, tmp_path):
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    want = create_chat_completion(Model(smollm2_q8, n_threads=1, n_ctx=512),
                                  [{"role": "user", "content": QUESTION}], max_tokens=24, temperature=0)
    want = want["choices"][0]["message"]["content"]
    with thread_server(["-m", smollm2_q8, "-t", "1", "-c", "512", "-a", "smol"]) as srv:
        browser.get(srv.url + "/")
        wait = WebDriverWait(browser, 30)
        wait.until(lambda d: d.find_element(By.ID, "model").text.startswith("smol"))
        for field, value in (("temperature", "0"), ("max-tokens", "24")):
            box = browser.find_element(By.ID, field)
            box.clear()
            box.send_keys(value)
        browser.find_element(By.ID, "prompt").send_keys(QUESTION, Keys.ENTER)
        reply = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, ".msg.assistant[data-done]"))
        assert reply.text == want.strip()     # innerText of a pre-wrap block drops no inner spaces
        user = browser.find_element(By.CSS_SELECTOR, ".msg.user")
        assert user.text == QUESTION
        status = browser.find_element(By.ID, "status").text
        assert "tok/s" in status and "sparsity 0.4" in status, status
        # the page resent the conversation: a second turn re-uses the slot's cache
        browser.find_element(By.ID, "prompt").send_keys("And of Italy?", Keys.ENTER)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".msg.assistant[data-done]")) == 2)
        status = browser.find_element(By.ID, "status").text
        cached = int(status.split(" new + ")[1].split(" cached")[0])
        assert cached > 20, status
        shot = tmp_path / "chat.png"
        assert browser.save_screenshot(str(shot))
    img = Image.open(shot).convert("RGB")
    assert img.size[0] == WIDTH and HEIGHT // 2 < img.size[1] <= HEIGHT, img.size
    colours = {c for _, c in img.getcolors(maxcolors=1 << 20)}
    assert (0xe8, 0xf0, 0xfe) in colours and (0xf4, 0xf5, 0xf7) in colours   # a user and an assistant bubble
    assert (0x2f, 0x6f, 0xde) in colours                                      # the Send button
    assert len(colours) > 50                                                  # text was drawn
