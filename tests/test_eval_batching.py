"""The evaluation path (`run_vqa`: DataLoader workers, image-grouped batches, shared image encoding)
answers exactly as `model.generate` does one question at a time, and hands every question its own image.

The tiny twin is pre-trained on easy-VQA captions, so its answers depend on the image; still, equal
answers alone would not catch a question paired with the wrong image (easy-VQA repeats question texts
across images, and two images can share colour and shape), so the test also checks the pixel values
each question is answered with.
"""

import pytest
import torch

from helpers import REPO
import src.inference
from src.data import load_samples
from src.evaluation import read_rows, run_vqa
from src.images import load_image
from src.modeling import load_blip2
from src.prompts import first_line, format_prompt, generation_record, get_decoding
from src.modeling import make_accelerator

PROMPT, DECODING = "vqa_opt", "vqa_beam5"


@pytest.fixture
def one_torch_thread():
    # the tiny model's ops are too small to split; two OpenMP threads on a busy 2-core machine
    # make every op wait for the descheduled one (about 10x slower, bench/eval_throughput.py)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def shared_image_questions() -> list:
    """24 easy-VQA val questions: all those of two images (cut to 20), then one question from each of 4 others."""
    by_image: dict[str, list] = {}
    for s in load_samples("easy_vqa", "val", REPO / "data"):
        by_image.setdefault(s.image_path, []).append(s)
    groups = [g for _, g in sorted(by_image.items()) if len(g) >= 10]
    chosen = (groups[0] + groups[1])[:20] + [g[0] for g in groups[2:6]]
    assert len(chosen) == 24 and len({s.image_path for s in chosen}) == 6
    return chosen


def one_at_a_time(model, processor, sample, decoding) -> str:
    enc = processor(images=[load_image(sample.image_path)], text=[format_prompt(PROMPT, sample.question)],
                    return_tensors="pt")
    out = model.generate(**enc, **decoding)
    return first_line(processor.tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True))


def test_run_vqa_with_workers_equals_one_at_a_time(tiny_model_dir, tmp_path, one_torch_thread, monkeypatch):
    model, processor = load_blip2(tiny_model_dir, quantization="none", device="cpu")
    samples = shared_image_questions()
    seen = []  # (prompt, pixel values it was answered with, images encoded in its batch, batch size)
    real_generate_batch = src.inference.generate_batch

    def spy(model_, processor_, pixel_values, prompts, decoding, image_index=None, **kwargs):
        index = list(range(len(prompts))) if image_index is None else list(image_index)
        seen.extend((p, pixel_values[i], len(pixel_values), len(prompts)) for p, i in zip(prompts, index))
        return real_generate_batch(model_, processor_, pixel_values, prompts, decoding, image_index=image_index, **kwargs)

    monkeypatch.setattr(src.inference, "generate_batch", spy)  # run_vqa imports it when called
    out_path = tmp_path / "answers.jsonl"
    record = {"model_id": tiny_model_dir, "adapter": None, **generation_record(PROMPT, DECODING)}
    # batch 8: an image's questions span batches and a batch holds several images, some shared
    run_vqa(samples, out_path, model=model, processor=processor, accelerator=make_accelerator(), record=record,
            batch_size=8, num_workers=2, desc="test")
    rows = read_rows(out_path)
    assert sorted(rows) == sorted(s.question_id for s in samples)
    assert all(r["error"] is None for r in rows.values())

    # every question was answered with its own image's pixel values (matched as a multiset: easy-VQA
    # repeats question texts across images), and shared images were encoded once per batch
    pixels_of = {path: processor.image_processor([load_image(path)], return_tensors="pt")["pixel_values"][0]
                 for path in {s.image_path for s in samples}}
    unmatched = [(format_prompt(PROMPT, s.question), s.image_path) for s in samples]
    for prompt, pixels, _, _ in seen:
        match = next((k for k, (p, path) in enumerate(unmatched) if p == prompt and torch.equal(pixels, pixels_of[path])),
                     None)
        assert match is not None, f"{prompt!r} was answered with the wrong image"
        unmatched.pop(match)
    assert not unmatched
    assert sum(n_images < n_prompts for _, _, n_images, n_prompts in seen) >= 16

    decoding = get_decoding(DECODING)
    single = {s.question_id: one_at_a_time(model, processor, s, decoding) for s in samples}
    batched = {qid: r["raw_answer"] for qid, r in rows.items()}
    assert batched == single
    assert len(set(single.values())) > 1, "the tiny model should not answer everything identically"
