"""Slow: the app served on 127.0.0.1 and driven by the system's headless Chromium (Debian's chromium and
chromium-driver): a bad file gives a message, an image and a question give both answers, as generating directly
would; a screenshot is saved to outputs/test-artifacts/app.png."""

import re
import shutil
import socket
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from phi3v_recipe.conversation import user_turn
from phi3v_recipe.predict import load_for_inference
from phi3v_recipe.synthetic import write_sample_set
from phi3v_recipe.train import main as train

from .conftest import free_port
from .test_app import direct_answer, serve_app
from .test_processor import photo
from .test_train import clean_env, demo_args

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "outputs" / "test-artifacts"
QUESTION = "What is this product?"


def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"):
        options.add_argument(flag)
    options.add_argument("--window-size=1400,1000")
    from selenium.webdriver.chrome.service import Service

    return webdriver.Chrome(service=Service(driver), options=options)


def words(text: str) -> str:
    """Letters and digits only: the page renders answers as Markdown, which may drop or restyle punctuation."""
    return re.sub(r"[^0-9A-Za-z]", "", text)


@pytest.mark.slow
def test_the_page_answers_in_a_real_browser(tiny_dir, tmp_path):
    pytest.importorskip("gradio")
    driver = browser()
    csv_path = write_sample_set(tmp_path / "data", rows=16, seed=3)
    adapter = tmp_path / "adapter"
    # the demo recipe as a LoRA run, a few steps: enough for the adapter's answer to differ from the base model's
    train(demo_args(tiny_dir, csv_path, adapter, "--max_steps", "3", "--eval_fraction", "0.25"))
    image = tmp_path / "bag.png"
    photo(320, 240, seed=5).save(image)
    notes = tmp_path / "notes.png"
    notes.write_text("a text file named like an image")

    port = free_port()
    env = clean_env(tmp_path, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1")
    server = serve_app(adapter, port, env, "--max_new_tokens", "12")
    try:
        deadline = time.time() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert server.poll() is None, server.stdout.read()
                assert time.time() < deadline, "the app did not start in 120 s"
                time.sleep(0.5)
        answers = run_page(driver, f"http://127.0.0.1:{port}", image, notes)
        assert server.poll() is None  # still serving after the bad file
    finally:
        driver.quit()
        server.terminate()
        log = server.communicate(timeout=30)[0]
    assert "Traceback" not in log, log[-3000:]

    model, processor = load_for_inference(str(adapter))
    images = [photo(320, 240, seed=5)]
    messages = [user_turn(QUESTION, 1)]
    tuned = direct_answer(model, processor, messages, images, max_new_tokens=12)
    base_model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    base = direct_answer(base_model, processor, messages, images, max_new_tokens=12)
    assert words(answers["tuned"]) == words(tuned) and words(answers["base"]) == words(base)
    assert words(tuned) and words(base) and words(tuned) != words(base)


def run_page(driver, url: str, image: Path, notes: Path) -> dict:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, 120)
    driver.get(url)
    upload = wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, "#images input[type=file]")))
    assert "Examples" in driver.page_source or "examples" in driver.page_source  # the run's eval examples

    def shown(name: str):  # the upload is done and the page's change handler has put it in the gallery
        def check(d):
            listed = name in d.find_element(By.CSS_SELECTOR, "#images").text.replace("\n", "")
            return listed and len(d.find_elements(By.CSS_SELECTOR, "#gallery img")) == 1

        return check

    upload.send_keys(str(notes))
    wait.until(shown(notes.name))
    question = driver.find_element(By.CSS_SELECTOR, "#question textarea")
    question.clear()
    question.send_keys(QUESTION)
    driver.find_element(By.CSS_SELECTOR, "#ask").click()
    wait.until(lambda d: "is not an image" in d.find_element(By.CSS_SELECTOR, "#status").text)

    driver.find_element(By.CSS_SELECTOR, "#images button[aria-label='Clear']").click()
    wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, "#gallery img"))
    upload = wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, "#images input[type=file]")))
    upload.send_keys(str(image))
    wait.until(shown(image.name))
    driver.find_element(By.CSS_SELECTOR, "#ask").click()

    def answers(d):
        found = {}
        for side in ("tuned", "base"):
            bubbles = d.find_elements(By.CSS_SELECTOR, f"#{side} .message.bot, #{side} [data-testid='bot']")
            found[side] = bubbles[-1].text if bubbles else ""
        done = not d.find_elements(By.CSS_SELECTOR, ".generating, .pending") and found["base"].strip()
        return found if done else False

    found = wait.until(answers)
    time.sleep(1)
    found = answers(driver) or found
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / "app.png"))
    return found
