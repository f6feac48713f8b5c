"""inference_demo.py: the answer handler in-process, then the real script in a real browser.

The server is started once for the module as a user would (`python inference_demo.py --model_id=<tiny>
--quantization=none --port=<free> --adapter_dir=<LoRA made here>`, Chinese by default) and driven with
Debian's chromium through Playwright, and with gradio_client for concurrent API calls; a second one runs
with --lang=en. Screenshots go to tests/artifacts/ (git-ignored): demo_answered.png, demo_comparison.png,
demo_zh.png, demo_en.png, report_zh.png, report_en.png.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers import REPO, assert_one_line_error, load_tuned, module_fixture, run_script
from PIL import Image

from src.demo_app import DemoOptions, comparison_view, make_answer_fn

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]  # a synthetic webcam
ARTIFACTS = REPO / "tests" / "artifacts"
PICTURE = REPO / "baseline_images" / "pic_01.jpg"
QUESTION = "What is in the image?"
GENERATION = dict(vqa_prompt="vqa_opt", vqa_decoding="vqa_beam5", caption_prompt="caption",
                  caption_decoding="caption_beam5")
MAX_UPLOAD_MB = 1  # the server's limit, small so that a too-large file is cheap to make
LORA_TARGETS = r".*language_model.*\.(q_proj|v_proj)$"
NO_PROXY = {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}

needs_browser = pytest.mark.skipif(not CHROMIUM.exists(),
                                   reason=f"{CHROMIUM} missing (apt-get install chromium); .ci/run installs it")


# --- the tiny model, with and without a LoRA adapter ---------------------------------------------

def reference(model, processor, path=PICTURE, question=QUESTION) -> dict:
    from src.images import load_image
    from src.inference import caption_and_answer

    return caption_and_answer(model, processor, [load_image(path)], question, **GENERATION)[0]


@module_fixture
def lora_adapter(tiny_model_dir, tmp_path_factory) -> Path:
    """A LoRA adapter for the tiny model with random, non-zero weights (so it changes the outputs),
    saved with save_pretrained like finetune_vqav2_lora.py's."""
    import torch
    from peft import LoraConfig, get_peft_model

    from src.modeling import load_blip2

    model, _ = load_blip2(tiny_model_dir, "none", device="cpu")
    torch.manual_seed(0)
    tuned = get_peft_model(model, LoraConfig(r=8, lora_alpha=8, target_modules=LORA_TARGETS, init_lora_weights=False))
    with torch.no_grad():  # large enough to change what the (sharp) random language model says
        for name, p in tuned.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)
    out = tmp_path_factory.mktemp("demo") / "lora_adapter"
    tuned.save_pretrained(out)
    return out


@module_fixture
def tiny(tiny_model_dir, lora_adapter, demo_process):
    """The plain tiny model, a second copy with the adapter loaded (the server's way: load_blip2, then apply_adapter),
    and the answers of both computed directly with src.inference. (demo_process is requested so that the
    server loads in the background while the in-process tests run.)"""
    import torch

    from src.modeling import load_blip2

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny model gains nothing from threads; on 2 shared cores they cost 10x
    plain, processor = load_blip2(tiny_model_dir, "none", device="cpu")
    tuned, _ = load_tuned(tiny_model_dir, "none", str(lora_adapter), device="cpu")
    ref_base, ref_tuned = reference(plain, processor), reference(tuned, processor)
    assert ref_base != ref_tuned, "the random adapter should change the outputs"
    yield {"plain": plain, "tuned": tuned, "processor": processor, "ref_base": ref_base, "ref_tuned": ref_tuned}
    torch.set_num_threads(threads)


def answer_fn(model, processor, adapter_available, max_upload_mb=10, lang="en", **kw):
    return make_answer_fn(model, processor, adapter_available=adapter_available, **GENERATION,
                          max_upload_mb=max_upload_mb, lang=lang, **kw)


def test_base_model_alone_answers_like_src_inference(tiny):
    caption, answer, caption_ft, answer_ft, status = answer_fn(tiny["plain"], tiny["processor"], False)(
        str(PICTURE), f"  {QUESTION} ")
    assert (caption, answer) == (tiny["ref_base"]["caption"], tiny["ref_base"]["answer"])
    assert caption and answer and caption_ft == answer_ft == ""
    assert status.startswith("Answered by the base model")


def test_adapter_is_switched_off_for_the_base_answer(tiny):
    """One PeftModel in memory: inside disable_adapter() it answers exactly like the plain model."""
    from peft.tuners.lora import LoraLayer

    out = answer_fn(tiny["tuned"], tiny["processor"], True)(str(PICTURE), QUESTION)
    assert out[:2] == (tiny["ref_base"]["caption"], tiny["ref_base"]["answer"])
    assert out[2:4] == (tiny["ref_tuned"]["caption"], tiny["ref_tuned"]["answer"])
    assert "fine-tuned" in out[4]
    lora_layers = [m for m in tiny["tuned"].modules() if isinstance(m, LoraLayer)]
    assert lora_layers and not any(m.disable_adapters for m in lora_layers)  # the adapter is on again afterwards


def test_user_mistakes_come_back_as_status_text(tiny, tmp_path):
    fn = answer_fn(tiny["plain"], tiny["processor"], False, max_upload_mb=0.05, max_pixels=100_000)
    fake = tmp_path / "holiday.jpg"
    fake.write_text("not a picture")
    small = tmp_path / "small.png"
    Image.new("RGB", (400, 300), "red").save(small)  # 120,000 pixels, a few hundred bytes
    cases = {
        (None, QUESTION): "Upload an image first",
        (str(fake), QUESTION): "not an image",
        (str(PICTURE), QUESTION): "too large: 0.1 MB",  # 66 KB > 0.05 MB
        (str(small), QUESTION): "400x300 pixels",
        (str(small), "   "): "The question is empty",
        (str(small), "why " * 200): "too long (799 characters",
    }
    for (path, question), fragment in cases.items():
        out = fn(path, question)
        assert out[:4] == ("", "", "", ""), (path, out)
        assert out[4].startswith("**Cannot answer:**") and fragment in out[4], (fragment, out[4])
        assert str(tmp_path) not in out[4]  # files are named by their own name, not the server's temp path
    # the same in Chinese, the default language of the page
    fn = answer_fn(tiny["plain"], tiny["processor"], False, max_upload_mb=0.05, max_pixels=100_000, lang="zh")
    chinese = ["请先上传图片", "holiday.jpg 不是图片", "pic_01.jpg 太大：0.1 MB", "small.png 的像素太多", "问题是空的",
               "问题太长（799 个字符"]
    for ((path, question), fragment), zh in zip(cases.items(), chinese):
        out = fn(path, question)
        assert out[4].startswith("**无法回答：**") and zh in out[4], (zh, out[4])
        assert str(tmp_path) not in out[4]


def test_model_calls_are_queued_one_at_a_time(tiny):
    """Gradio 6 does not publish concurrency limits in /config, so check the built app itself."""
    from src.demo_app import build_demo

    demo = build_demo(tiny["plain"], tiny["processor"], adapter_available=False,
                      options=DemoOptions(comparisons_dir="none", max_queue=7))
    model_fns = [fn for fn in demo.fns.values() if fn.concurrency_id == "model"]
    assert {fn.api_name for fn in model_fns} >= {"ask"}  # the button and Enter in the question box
    assert len(model_fns) == 2 and all(fn.concurrency_limit == 1 for fn in model_fns)
    assert demo._queue.max_size == 7


def test_comparison_view_without_or_with_broken_results(tmp_path):
    text, table, charts, cases, report = comparison_view(tmp_path)
    assert "还没有对比结果" in text and "python compare_baseline_finetuned.py" in text
    assert (table, charts, cases, report) == (None, [], [], None)
    assert "No comparison results yet" in comparison_view(tmp_path, "en")[0]
    (tmp_path / "comparison.json").write_text("{not json")
    text, *_ = comparison_view(tmp_path)
    assert "无法读取" in text and "python compare_baseline_finetuned.py" in text


# --- the script's start-up checks (no model is loaded) ------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_busy_port_is_one_line_error_before_the_model_load():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = run_script("inference_demo.py", f"--port={port}", "--model_id=/nonexistent/blip2", timeout=120)
    assert_one_line_error(proc, f"127.0.0.1:{port}", f"--port={port + 1}")


def test_unknown_language_is_one_line_error_before_the_model_load():
    proc = run_script("inference_demo.py", "--lang=fr", f"--port={free_port()}", "--model_id=/nonexistent/blip2",
                      timeout=120)
    assert_one_line_error(proc, "--lang='fr'", "--lang=zh", "--lang=en")


@pytest.mark.slow
def test_public_host_warns_and_run_comparison_runs_before_serving(tmp_path):
    """--host=0.0.0.0 prints the warning; --run_comparison=True runs the compare script first (here it finds
    no results and says so) and goes on; then the missing model stops it with one line."""
    proc = run_script("inference_demo.py", "--host=0.0.0.0", f"--port={free_port()}", "--run_comparison=True",
                      f"--output_dir={tmp_path / 'outputs'}", f"--comparisons_dir={tmp_path / 'comparisons'}",
                      f"--model_id={tmp_path / 'no-model'}", "--quantization=none", "--adapter_dir=", timeout=180)
    warnings = [line for line in proc.stdout.splitlines() if "reachable from other machines" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning:"), proc.stdout
    assert "running the comparison" in proc.stdout and "the comparison failed" in proc.stdout, proc.stdout
    assert "create_vqav2_baseline.py" in proc.stderr  # the compare script's own one-line reason
    assert proc.stdout.index("the comparison failed") < proc.stdout.index("***** BLIP-2 demo")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: model folder not found"), proc.stderr


@pytest.mark.slow
def test_default_adapter_follows_output_dir_and_a_missing_one_leaves_the_base_model(tmp_path):
    """ADAPTER_DIR = "{output_dir}/lora_adapter": with no adapter there the demo says so and goes on with the
    base model alone (then the missing model stops it with one line)."""
    proc = run_script("inference_demo.py", f"--port={free_port()}", f"--output_dir={tmp_path}",
                      f"--model_id={tmp_path / 'no-model'}", "--quantization=none", timeout=180)
    assert f"no LoRA adapter in {tmp_path / 'lora_adapter'} (adapter_config.json missing)" in proc.stdout, proc.stdout
    assert "adapter: none" in proc.stdout
    assert_one_line_error(proc, "model folder not found")


# --- the script, in a browser --------------------------------------------------------------------

@contextmanager
def serving(tmp: Path, tiny_model_dir: str, *args: str):
    """`python inference_demo.py` with the tiny model and `args` on a free port, stopped on exit, when its log
    must hold no traceback."""
    port = free_port()
    log_path = tmp / f"server-{port}.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false",
           "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1", **NO_PROXY}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "inference_demo.py", f"--model_id={tiny_model_dir}", "--quantization=none",
             f"--port={port}", f"--max_upload_mb={MAX_UPLOAD_MB}", "--device=cpu", *args],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            yield {"url": f"http://127.0.0.1:{port}/", "tmp": tmp, "log": log_path, "proc": proc}
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    text = log_path.read_text()
    assert "Traceback" not in text, text[-4000:]


def wait_until_served(demo: dict) -> dict:
    proc, url, log = demo["proc"], demo["url"], demo["log"]
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.time() + 120
    while True:
        if proc.poll() is not None:
            pytest.fail(f"inference_demo.py exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if opener.open(url, timeout=2).status == 200:
                return demo
        except OSError:
            pass
        if time.time() > deadline:
            pytest.fail(f"inference_demo.py did not serve {url} within 120 s:\n{log.read_text()[-4000:]}")
        time.sleep(0.5)


@module_fixture
def demo_process(lora_adapter, tiny_model_dir, tmp_path_factory):
    """The demo with the tiny model and the adapter, in Chinese (the default), started once for the module."""
    tmp = tmp_path_factory.mktemp("demo-server")
    comparisons = tmp / "comparisons"
    comparisons.mkdir()  # empty: the Comparison tab must say how to make it
    with serving(tmp, tiny_model_dir, f"--adapter_dir={lora_adapter}", f"--comparisons_dir={comparisons}") as demo:
        yield {**demo, "comparisons": comparisons}


@module_fixture
def server(demo_process):
    """The demo once it answers HTTP."""
    return wait_until_served(demo_process)


@module_fixture
def browser(server):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} missing (apt-get install chromium); .ci/run installs it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


def open_page(browser, url: str, locale: str | None = None):
    pg = browser.new_page(viewport={"width": 1400, "height": 1000}, locale=locale)
    pg.set_default_timeout(30_000)
    pg.goto(url)
    pg.wait_for_selector("#ask")
    return pg


@pytest.fixture
def page(browser, server):
    pg = open_page(browser, server["url"])
    yield pg
    pg.close()


def value(page, elem_id: str) -> str:
    return page.eval_on_selector(f"#{elem_id} textarea", "e => e.value")


def wait_for_status(page, fragment: str, timeout=30_000):
    page.wait_for_function("([f]) => document.querySelector('#status').innerText.includes(f)", arg=[fragment],
                           timeout=timeout)
    return page.inner_text("#status")


def upload(page, path):
    """Through the Image component's own file input, as a click on its upload area would."""
    if page.locator("#image img").count():  # a picture is shown: remove it first
        page.click("#image button[aria-label='Remove Image']")
        page.wait_for_function("!document.querySelector('#image img')")
    page.set_input_files("#image input[type=file]", str(path))


def click_example(page, name: str):
    """Click the example thumbnail of picture `name` (the thumbnails are <img> of the examples' copies)."""
    page.click(f"#examples img[src$='/{name}']")


def toasts(page, fragment: str) -> str:
    page.wait_for_function("([f]) => document.body.innerText.includes(f)", arg=[fragment])
    return page.inner_text("body")


@needs_browser
def test_browser_answers_base_and_finetuned_side_by_side(page, tiny):
    upload(page, PICTURE)
    wait_for_status(page, "pic_01.jpg")  # the upload check accepted the picture
    page.wait_for_selector("#image img")
    page.fill("#question textarea", QUESTION)
    page.click("#ask")
    status = wait_for_status(page, "用时", timeout=60_000)
    assert "微调后" in status
    got = {k: value(page, k) for k in ("caption", "answer_base", "caption_finetuned", "answer_finetuned")}
    assert all(v.strip() for v in got.values()), got
    assert page.is_visible("#finetuned_column")
    # the server's one PeftModel, adapter off / on, answers like the plain / adapted model made here
    assert (got["caption"], got["answer_base"]) == (tiny["ref_base"]["caption"], tiny["ref_base"]["answer"])
    assert (got["caption_finetuned"], got["answer_finetuned"]) == (tiny["ref_tuned"]["caption"],
                                                                   tiny["ref_tuned"]["answer"])
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "demo_answered.png"), full_page=True)


@needs_browser
def test_browser_example_thumbnail_then_ask(page, tiny):
    """Click a thumbnail: the picture loads into the Image component and is what the model sees."""
    assert page.locator("#examples img").count() == 10  # baseline_images/ as thumbnails, not file names
    click_example(page, "pic_03.jpg")
    assert "pic_03.jpg" in wait_for_status(page, "pic_03.jpg")
    page.wait_for_selector("#image img")
    page.fill("#question textarea", QUESTION)
    page.click("#ask")
    wait_for_status(page, "用时", timeout=60_000)
    ref = reference(tiny["plain"], tiny["processor"], REPO / "baseline_images" / "pic_03.jpg")
    assert (value(page, "caption"), value(page, "answer_base")) == (ref["caption"], ref["answer"])
    page.fill("#question textarea", "   ")
    page.click("#ask")
    status = wait_for_status(page, "问题是空的")
    assert "无法回答" in status and value(page, "answer_base") == ""


@needs_browser
def test_browser_refuses_files_that_are_not_usable_images(page, server):
    fake = server["tmp"] / "holiday.jpg"  # an image name, text inside: reaches src/images.load_image
    fake.write_text("this is not a picture\n")
    upload(page, fake)
    assert "holiday.jpg 不是图片" in wait_for_status(page, "无法使用这个文件")
    page.wait_for_function("!document.querySelector('#image img')")  # the refused file is taken off the page
    page.click("#ask")
    assert "请先上传图片" in wait_for_status(page, "无法回答") and value(page, "answer_base") == ""

    notes = server["tmp"] / "notes.txt"  # not an image file name: refused by the page itself
    notes.write_text("hello")
    upload(page, notes)
    assert "Only image" in toasts(page, "notes.txt")

    big = server["tmp"] / "big.png"  # over MAX_UPLOAD_MB: refused before it is stored
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(int(1.2 * MAX_UPLOAD_MB * 2**20)))
    upload(page, big)
    assert "exceed the maximum allowed size" in toasts(page, "big.png")


@needs_browser
def test_browser_paste_and_webcam_pictures(browser, server):
    """The Image component's other sources: a picture pasted from the clipboard, and a webcam photo
    (chromium's synthetic camera), each checked, shown and answered."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, locale="en-US")
    context.grant_permissions(["clipboard-read", "clipboard-write", "camera"], origin=server["url"].rstrip("/"))
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(server["url"])
    page.wait_for_selector("#ask")
    png = page.evaluate("""async (b64) => {  // the picture on the clipboard as PNG, as browsers copy images
        const bitmap = await createImageBitmap(await (await fetch('data:image/jpeg;base64,' + b64)).blob());
        const canvas = document.createElement('canvas');
        canvas.width = bitmap.width; canvas.height = bitmap.height;
        canvas.getContext('2d').drawImage(bitmap, 0, 0);
        const blob = await new Promise(done => canvas.toBlob(done, 'image/png'));
        await navigator.clipboard.write([new ClipboardItem({'image/png': blob})]);
        return [bitmap.width, bitmap.height]; }""", base64.b64encode(PICTURE.read_bytes()).decode("ascii"))
    page.click("#image button[aria-label='Paste from clipboard']")
    assert f"{png[0]}x{png[1]}" in wait_for_status(page, "clipboard.png")
    page.click("#ask")
    wait_for_status(page, "用时", timeout=60_000)
    assert value(page, "answer_base").strip() and value(page, "answer_finetuned").strip()

    page.click("#image button[aria-label='Remove Image']")
    page.click("#image button[aria-label='Capture from camera']")
    page.click("#image button:has-text('Click to Access Webcam')")
    page.wait_for_function("document.querySelector('#image video')?.readyState >= 2")  # frames are coming
    page.click("#image button[aria-label='capture photo']")
    wait_for_status(page, "image.png")
    page.fill("#question textarea", "What color is it?")
    page.click("#ask")
    wait_for_status(page, "用时", timeout=60_000)
    assert value(page, "answer_base").strip()
    context.close()


def test_five_concurrent_api_requests_are_all_answered(server, monkeypatch):
    """gradio_client, five jobs at once: the queue serialises them (concurrency limit 1), none is lost."""
    for key, val in NO_PROXY.items():
        monkeypatch.setenv(key, val)
    from gradio_client import Client, handle_file

    client = Client(server["url"], verbose=False, download_files=False)
    params = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/ask"]["parameters"]
    assert [p["component"] for p in params] == ["Image", "Textbox"]
    pictures = [REPO / "baseline_images" / f"pic_{i:02d}.jpg" for i in range(1, 6)]
    jobs = [client.submit(handle_file(str(p)), QUESTION, api_name="/ask") for p in pictures]
    results = [job.result(timeout=120) for job in jobs]
    for p, (caption, answer, caption_ft, answer_ft, status) in zip(pictures, results):
        assert caption.strip() and answer.strip() and caption_ft.strip() and answer_ft.strip(), (p, caption, answer)
        assert status.startswith("由基座模型和微调后的模型"), status
    # a non-image through the API (no browser-side file-type check) gets the message, not an exception
    notes = server["tmp"] / "api_notes.txt"
    notes.write_text("hello")
    out = client.predict(handle_file(str(notes)), QUESTION, api_name="/ask")
    assert out[4].startswith("**无法回答：**") and "api_notes.txt 不是图片" in out[4]
    # a decompression bomb (400 million pixels in a small file) is refused from its header, never decoded
    # (sent through the API: a browser would try to show it)
    bomb = server["tmp"] / "bomb.png"
    Image.new("1", (20_000, 20_000)).save(bomb)
    assert bomb.stat().st_size < MAX_UPLOAD_MB * 2**20
    out = client.predict(handle_file(str(bomb)), QUESTION, api_name="/ask")
    assert out[4].startswith("**无法回答：**") and "bomb.png 的像素太多" in out[4], out[4]


def test_twenty_concurrent_requests_none_fails_and_memory_stays_flat(server, monkeypatch):
    """A class hitting the demo at once: two bursts of 20 jobs through gradio_client, all answered, and the
    second burst adds (almost) nothing to the server's resident memory: what a burst leaves behind per request
    would show again in the second. The first burst may grow the allocator's arenas (that is not a leak and
    differs between allocators), so only the second is measured, with a margin for page-level noise."""
    import psutil

    for key, val in NO_PROXY.items():
        monkeypatch.setenv(key, val)
    from gradio_client import Client, handle_file

    client = Client(server["url"], verbose=False, download_files=False)
    pictures = [REPO / "baseline_images" / f"pic_{i % 10 + 1:02d}.jpg" for i in range(20)]
    proc = psutil.Process(server["proc"].pid)
    for job in [client.submit(handle_file(str(p)), QUESTION, api_name="/ask") for p in pictures[:4]]:
        job.result(timeout=120)  # warm-up: first-call allocations are not a leak
    rss = []
    for burst in range(2):
        jobs = [client.submit(handle_file(str(p)), f"{QUESTION} ({burst}.{i})", api_name="/ask")
                for i, p in enumerate(pictures)]
        results = [job.result(timeout=300) for job in jobs]
        assert all(r[4].startswith("由基座模型") and r[1].strip() and r[3].strip() for r in results), results
        rss.append(proc.memory_info().rss)
    grown = rss[1] - rss[0]
    assert grown <= max(0.05 * rss[0], 48 * 2**20), [r / 2**20 for r in rss]


def write_result_files(out: Path, model_id="Salesforce/blip2-opt-2.7b", answer_type=None, ft_answer=None) -> None:
    """Six questions on the demo pictures; the fine-tuned rows are right more often (and their raw text
    was "Orange." where the processed answer is "orange")."""
    decoding = {"num_beams": 5, "length_penalty": -1.0, "max_new_tokens": 10, "min_new_tokens": 1, "do_sample": False}
    questions = [  # (picture, question, type, ten annotator answers, baseline answer, fine-tuned answer)
        (1, "What color is the suit?", "other", ["orange"] * 9 + ["red"], "an orange suit", "orange"),
        (1, "Is there a flag?", "yes/no", ["yes"] * 10, "yes", "yes"),
        (2, "What is in the cup?", "other", ["coffee"] * 8 + ["espresso"] * 2, "tea", "coffee"),
        (3, "What animal is this?", "other", ["cat"] * 10, "cat", "dog"),
        (4, "Is it daytime?", "yes/no", ["no"] * 10, "yes", "no"),
        (6, "How many rows of coins are there?", "number", ["4"] * 10, "there are four", "4"),
    ]
    base, tuned = [], []
    for i, (pic, q, atype, gts, a_base, a_ft) in enumerate(questions):
        common = {"question_id": 100 + i, "image_id": pic, "image_path": f"baseline_images/pic_{pic:02d}.jpg",
                  "question": q, "gt_answers": gts, "answer_type": answer_type or atype,
                  "question_type": q.split()[0].lower(), "model_id": model_id, "prompt": "vqa_opt",
                  "decoding": decoding, "error": None}
        a_ft = ft_answer or a_ft
        base.append({**common, "answer": a_base, "raw_answer": a_base, "adapter": None})
        tuned.append({**common, "answer": a_ft, "raw_answer": a_ft.capitalize() + "." if i == 0 else a_ft,
                      "adapter": "outputs/lora_adapter"})
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("vqav2_baseline.jsonl", base), ("vqav2_finetuned.jsonl", tuned)):
        (out / name).write_text("".join(json.dumps(r) + "\n" for r in rows))


@needs_browser
def test_browser_comparison_tab_before_and_after_the_compare_script(page, server):
    import inference_demo

    page.click("button[role=tab]:has-text('对比结果')")
    page.wait_for_function("document.querySelector('#comparison_summary')?.innerText.includes('compare_baseline')")
    text = page.inner_text("#comparison_summary")
    assert "还没有对比结果" in text and "python compare_baseline_finetuned.py" in text
    assert not page.is_visible("#chart_accuracy") and not page.is_visible("#comparison_cases")

    # the RUN_COMPARISON path writes the files; Reload shows them without restarting the demo
    outputs = server["tmp"] / "outputs"
    write_result_files(outputs)
    assert inference_demo.run_comparison(str(outputs), str(server["comparisons"]))
    result = json.loads((server["comparisons"] / "comparison.json").read_text())
    page.click("#comparison_reload")
    page.wait_for_function("document.querySelector('#comparison_table')?.innerText.includes('VQA 准确率')")
    text = page.inner_text("#comparison_summary")
    table = page.inner_text("#comparison_table")
    for number in (result["baseline"]["vqa_accuracy"], result["finetuned"]["vqa_accuracy"]):
        assert f"{number:.2f}" in table, (number, table)
    assert f"{result['change']['vqa_accuracy']['diff']:+.2f}" in table
    assert f"对比的题数：{result['n']}" in text
    assert f"按图片整组重采样（{result['bootstrap']['clusters']['n']} 张图片" in text  # what the intervals resampled
    assert "基线 0 / 6，微调后 1 / 6" in text  # answers changed by the answer processing
    for chart in ("accuracy", "answer_length", "contact_sheet"):  # no demo_images.png: no demo-image rows
        page.wait_for_selector(f"#chart_{chart} img")
    assert not page.is_visible("#chart_demo_images")
    page.wait_for_selector("#comparison_cases img")
    assert page.locator("#comparison_cases img").count() == len(result["artefacts"]["cases"]) > 0
    assert page.is_visible("#comparison_report")
    page.screenshot(path=str(ARTIFACTS / "demo_comparison.png"), full_page=True)


MARKUP = {"model_id": '<img src="http://127.0.0.1:9/model.png"><a href="http://127.0.0.1:9/m">model</a>',
          "answer_type": '<form action="http://127.0.0.1:9/f"><input name=q></form>[t](http://127.0.0.1:9/t)',
          "answer": '<img src="http://127.0.0.1:9/answer.png"> <a href="http://127.0.0.1:9/a">a</a> http://127.0.0.1:9/x'}


@needs_browser
def test_browser_comparison_tab_shows_result_text_as_text(browser, tiny_model_dir, tmp_path):
    """Markup in a result file's model id, answer type and answers (and in comparison.json edited by hand)
    reaches the tab as text: the browser fetches nothing from it and makes no link or form."""
    out, comparisons = tmp_path / "outputs", tmp_path / "comparisons"
    write_result_files(out, model_id=MARKUP["model_id"], answer_type=MARKUP["answer_type"], ft_answer=MARKUP["answer"])
    run_script("compare_baseline_finetuned.py", f"--output_dir={out}", f"--report_dir={comparisons}", check=True)
    data = json.loads((comparisons / "comparison.json").read_text())
    data["warnings"].append('<form action="http://127.0.0.1:9/w"><button>send</button></form> <b>bold</b>')
    (comparisons / "comparison.json").write_text(json.dumps(data))
    with serving(tmp_path, tiny_model_dir, "--adapter_dir=", f"--comparisons_dir={comparisons}") as demo:
        wait_until_served(demo)
        pg = open_page(browser, demo["url"])
        requested = []
        pg.on("request", lambda r: requested.append(r.url))
        pg.click("button[role=tab]:has-text('对比结果')")
        pg.wait_for_function("document.querySelector('#comparison_table')?.innerText.includes('VQA')")
        pg.wait_for_timeout(1000)  # give any image a moment to be requested
        summary, table = pg.locator("#comparison_summary"), pg.locator("#comparison_table")
        text = summary.inner_text()
        assert 'src="http://127.0.0.1:9/model.png"' in text and "<b>bold</b>" in text
        assert "<form action=" in table.inner_text()  # the answer type, a cell of the score table
        assert summary.locator("a, form, img, input, button, b").count() == 0
        assert table.locator("a, form, img, b").count() == 0  # (the table's own sort and copy buttons aside)
        assert not [u for u in requested if "127.0.0.1:9/" in u], requested
        pg.close()


@needs_browser
def test_browser_language_switch_and_report_in_both_languages(browser, server, tiny_model_dir, tmp_path):
    """LANG="en" gives an English page, the default a Chinese one; screenshots of both, and of the report
    compare_baseline_finetuned.py writes in each language (numbers first, example groups folded).
    Gradio's own widget texts ("Drop Image Here") follow the browser's language: the browser here is set
    to the page's language, as a student's would be."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with serving(tmp_path, tiny_model_dir, "--adapter_dir=", "--lang=en",
                 f"--comparisons_dir={tmp_path / 'none'}") as demo:
        wait_until_served(demo)
        pg = open_page(browser, demo["url"], locale="en-US")
        assert pg.inner_text("#ask") == "Ask" and "Upload an image or click an example" in pg.inner_text("#status")
        assert pg.locator("button[role=tab]:has-text('Comparison')").count() == 1
        click_example(pg, "pic_02.jpg")
        wait_for_status(pg, "Image pic_02.jpg")
        pg.click("#ask")
        assert "Answered by the base model" in wait_for_status(pg, "Answered", timeout=60_000)
        pg.screenshot(path=str(ARTIFACTS / "demo_en.png"), full_page=True)
        pg.close()
    pg = open_page(browser, server["url"], locale="zh-CN")  # and back: the default page is Chinese
    assert pg.inner_text("#ask") == "提问" and "上传图片或点击下方示例" in pg.inner_text("#status")
    assert not re.search(r"[A-Za-z]{4,}", pg.inner_text("#tabs").replace("LoRA", "").replace("baseline_images", ""))
    pg.screenshot(path=str(ARTIFACTS / "demo_zh.png"), full_page=True)

    out = tmp_path / "outputs"
    write_result_files(out)
    for lang, heading in (("zh", "按答案类型"), ("en", "Per answer type")):
        report = tmp_path / f"report-{lang}"
        run_script("compare_baseline_finetuned.py", f"--output_dir={out}", f"--report_dir={report}", f"--lang={lang}",
                   "--cases_per_group=3", check=True)
        pg.goto((report / "report.html").as_uri())
        assert heading in pg.inner_text("h2")
        assert pg.locator("details.case-group[open]").count() >= 1
        assert pg.locator("#questions").get_attribute("open") is None  # every question: folded
        height = pg.evaluate("document.documentElement.scrollHeight")
        assert height < 5000, height
        pg.screenshot(path=str(ARTIFACTS / f"report_{lang}.png"), full_page=True)
    pg.close()


@needs_browser
def test_readme_easy_vqa_examples_command(browser, tiny_model_dir, tmp_path):
    """README step 7's offline command: easy-VQA pictures (converted on first use) as example thumbnails."""
    from src.data import prepare_easy_vqa

    prepare_easy_vqa(REPO / "data")
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    line = next(l.strip() for l in readme.splitlines() if "--examples_dir=data/easy_vqa/images/val" in l)
    words = shlex.split(line)
    assert words[:2] == ["python", "inference_demo.py"]
    args = [w for w in words[2:] if not w.startswith(("--model_id=", "--quantization="))]  # serving() sets them
    assert {w for w in words[2:]} - set(args) == {"--model_id=outputs/tiny-blip2"}
    with serving(tmp_path, tiny_model_dir, *args, "--adapter_dir=", f"--comparisons_dir={tmp_path / 'none'}") as demo:
        wait_until_served(demo)
        pg = open_page(browser, demo["url"])
        thumbs = pg.locator("#examples img")
        assert thumbs.count() == 12  # the first page of MAX_EXAMPLES=24
        assert value(pg, "question") == "what color is the shape?"
        name = thumbs.first.get_attribute("src").rsplit("/", 1)[1]
        assert (REPO / "data" / "easy_vqa" / "images" / "val" / name).is_file()
        thumbs.first.click()
        wait_for_status(pg, name)
        pg.click("#ask")
        wait_for_status(pg, "用时", timeout=60_000)
        assert value(pg, "answer_base").strip()
        pg.close()


def test_comparison_markdown_escapes_result_text():
    """Result-file text cannot become markup in the tab: no tag, link or image syntax survives escaping
    (the browser test above shows the rendered page)."""
    from src.demo_app import comparison_markdown, md_text

    text = '<img src="http://x/y.png"> [link](http://x) ![i](http://x/i.png) http://x/z *em* `code` | pipe'
    escaped = md_text(text)
    assert "<" not in escaped and ">" not in escaped and "](" not in escaped and "http://" not in escaped
    result = {"n": 1, "generated": "<b>now</b>", "settings": {"baseline": {"model_id": text, "prompt": text},
                                                            "finetuned": {"adapter": text}},
              "baseline": {"vqa_accuracy": 50.0, "exact_match": 50.0, "n": 1,
                           "per_answer_type": {text: {"vqa_accuracy": 50.0, "exact_match": 50.0, "n": 1}}},
              "finetuned": None, "warnings": [text]}
    md = comparison_markdown(result, "<dir>")
    assert "<img" not in md and "<b>" not in md and "<dir>" not in md and "](http" not in md


# --- example pictures the adapter trained on ---------------------------------------------------------------

def header_text(demo) -> str:
    return next(c["props"]["value"] for c in demo.config["components"] if c["props"].get("elem_id") == "header")


def test_the_header_says_how_many_example_pictures_the_adapter_trained_on():
    from src.demo_app import build_demo
    from src.i18n import texts

    for lang in ("zh", "en"):
        options = DemoOptions(comparisons_dir="none", examples_dir="none", lang=lang, overlap_images=3)
        header = header_text(build_demo(None, None, adapter_available=False, options=options))
        assert texts(lang)("demo_overlap", images=3).strip() in header, header
    clean = header_text(build_demo(None, None, adapter_available=False,
                                   options=DemoOptions(comparisons_dir="none", examples_dir="none")))
    assert "--allow_train_overlap" not in clean


def test_allowed_training_pictures_among_the_examples_are_named_on_the_page(tmp_path):
    """inference_demo.py --allow_train_overlap=True offers them, and the page it serves (not only its console)
    says how many the adapter trained on."""
    from helpers import adapter_trained_on_examples

    from src.i18n import texts

    model, adapter, pictures = adapter_trained_on_examples(tmp_path)
    with serving(tmp_path, model, f"--adapter_dir={adapter}", f"--examples_dir={pictures}",
                 f"--comparisons_dir={tmp_path}", "--allow_train_overlap=True") as demo:
        wait_until_served(demo)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        config = json.loads(opener.open(demo["url"] + "config", timeout=30).read())
        header = next(c["props"]["value"] for c in config["components"] if c["props"].get("elem_id") == "header")
        assert texts("zh")("demo_overlap", images=2).strip() in header, header
        assert "warning: 2 of these questions ask about 2 pictures" in demo["log"].read_text()
