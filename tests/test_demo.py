"""`minillava demo`: the Gradio chat end to end in headless Chromium — upload, ask, streamed answer, attention map.

The browser test needs gradio (the optional ``demo`` extra; ``scripts/setup.sh`` puts it in ``.venv/demo``, an
overlay environment, because gradio pins an older Pillow than the core uses) and Debian's ``chromium`` +
``chromium-driver``; without them it skips and says which is missing. Everything stays on 127.0.0.1: Chromium's
resolver is told to find no other host, and gradio's analytics are off.

``MINILLAVA_DEMO_SCREENSHOT=figures/demo.png`` saves a screenshot; ``MINILLAVA_DEMO_MODEL=DIR`` serves a trained
model instead of the tiny stand-ins with a random projector.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def demo_python() -> str | None:
    """An interpreter that can import gradio and minillava: this one, or the overlay that setup.sh makes."""
    if importlib.util.find_spec("gradio") is not None:
        return sys.executable
    overlay = ROOT / ".venv" / "demo" / "bin" / "python"
    if overlay.exists() and subprocess.run([str(overlay), "-c", "import gradio, minillava"], cwd=ROOT,
                                           capture_output=True, timeout=120).returncode == 0:
        return str(overlay)
    return None


def browser() -> tuple[str, str] | None:
    chrome = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver = shutil.which("chromedriver")
    return (chrome, driver) if chrome and driver else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """The shipped tiny CLIP + chat LM with a fresh projector: untrained W, but fluent answers."""
    if os.environ.get("MINILLAVA_DEMO_MODEL"):
        return Path(os.environ["MINILLAVA_DEMO_MODEL"])
    from minillava.config import load_config
    from minillava.model.build import build_model, save_model

    cfg = load_config("tiny")
    model, _ = build_model(cfg)
    return save_model(model, cfg, tmp_path_factory.mktemp("demo_model"), include_lm=False)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    from minillava.data.shapes import generate_split

    record, _, image = generate_split(4, "test", seed=3, size_px=96)[3]
    path = tmp_path_factory.mktemp("scene") / "scene.png"
    image.save(path)
    names = [o.category for o in record.objects]
    unique = [n for n in names if names.count(n) == 1] or names  # a question with one right answer
    return path, f"What color is the {unique[0]}?"


def test_stream_grows_to_the_batch_answer(model_dir, scene):
    """The streamed text only grows, and ends as the answer `minillava chat` gives (same greedy decode)."""
    from minillava.demo import stream_answer
    from minillava.inference import chat_once, pixels_for
    from minillava.model.build import load_model

    model, processor, cfg = load_model(model_dir)
    parts = list(stream_answer(model, pixels_for(processor, [scene[0]]), scene[1], template=cfg.stage2_template))
    expected = chat_once(model, processor, scene[0], scene[1], template=cfg.stage2_template)
    assert parts and parts[-1] == expected
    assert all(b.startswith(a) for a, b in zip(parts, parts[1:]))


def test_missing_gradio_is_one_clear_line(model_dir, capsys):
    if importlib.util.find_spec("gradio") is not None:
        pytest.skip("gradio is installed here, so the missing-extra message cannot be shown")
    from minillava.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--model", str(model_dir)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'minillava[demo]'" in err


def test_browser_upload_ask_and_see_answer_and_attention(model_dir, scene):
    python, found = demo_python(), browser()
    missing = [what for what, ok in [("gradio (pip install 'minillava[demo]' or scripts/setup.sh)", python),
                                     ("chromium + chromium-driver (apt)", found),
                                     ("selenium", importlib.util.find_spec("selenium"))] if not ok]
    if missing:
        reason = "web demo test skipped: missing " + ", ".join(missing)
        print(reason)
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    from minillava.inference import chat_once
    from minillava.model.build import load_model

    model, processor, cfg = load_model(model_dir)
    expected = chat_once(model, processor, scene[0], scene[1], template=cfg.stage2_template)
    assert expected, "the model gave an empty answer; pick another scene"

    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost", "SE_OFFLINE": "true",
           "PYTHONPATH": str(ROOT)}
    log = tempfile.TemporaryFile("w+")  # the server's output, shown if the test fails
    server = subprocess.Popen([python, "-m", "minillava.cli", "demo", "--model", str(model_dir), "--port", str(port)],
                              cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    driver = None
    try:
        deadline = time.monotonic() + 300  # generous: a busy machine imports slowly
        while True:  # the server is up when its port accepts connections
            assert server.poll() is None, f"demo server exited with {server.returncode}"
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, "demo server did not start within 300 s"
            time.sleep(0.5)

        options = webdriver.ChromeOptions()
        options.binary_location = found[0]
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,1000", "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--disable-extensions",
                     "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):  # no host but this one
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(executable_path=found[1]), options=options)
        wait = WebDriverWait(driver, 120)
        driver.get(f"http://127.0.0.1:{port}/")

        upload = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#image input[type=file]")))
        upload.send_keys(str(scene[0]))
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#image img")))  # the picture appears
        time.sleep(1)  # the upload's change event clears the chat; let it land before asking
        driver.find_element(By.CSS_SELECTOR, "#show-attention input[type=checkbox]").click()
        driver.find_element(By.CSS_SELECTOR, "#question textarea").send_keys(scene[1])
        driver.find_element(By.ID, "ask").click()

        wait.until(lambda d: expected in d.find_element(By.ID, "chat").text)
        chat_text = driver.find_element(By.ID, "chat").text
        assert scene[1] in chat_text and expected in chat_text
        heat = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#attention img")))
        wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", heat))
        assert heat.size["width"] > 100  # the attention map is drawn, not a broken-image icon
        shown = driver.find_element(By.CSS_SELECTOR, "#image img")
        assert driver.execute_script("return arguments[0].naturalWidth", shown) == 96  # the uploaded scene

        if shot := os.environ.get("MINILLAVA_DEMO_SCREENSHOT"):
            path = Path(shot) if Path(shot).is_absolute() else ROOT / shot
            path.parent.mkdir(parents=True, exist_ok=True)
            time.sleep(0.5)
            driver.save_screenshot(str(path))
    except Exception:
        log.seek(0)
        print("--- demo server log ---\n" + log.read()[-3000:])
        raise
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
