"""Batched generation (left padding, shared image features) equals one-at-a-time `model.generate`."""

import pytest

from helpers import REPO, module_fixture
from src.images import load_image
from src.inference import generate_for_images
from src.modeling import load_blip2
from src.prompts import first_line, format_prompt, get_decoding

QUESTIONS = ["What is in the image?", "how many?", "What color is the shape in the middle of the picture?", "is it?",
             "Where was this photo taken, and by whom?", "what", "Is there a cat?", "What is the man holding in his hand?",
             "why?", "Which sport is being played here today?"]


@module_fixture
def model_and_processor(tiny_model_dir):
    return load_blip2(tiny_model_dir, quantization="none")


def one_at_a_time(model, processor, image, prompt, decoding):
    enc = processor(images=[image], text=[prompt], return_tensors="pt")
    out = model.generate(**enc, **decoding)
    return first_line(processor.tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True))


@pytest.mark.parametrize("decoding_name", ["greedy", "vqa_beam5"])
def test_batched_equals_single_on_the_ten_images(model_and_processor, decoding_name):
    model, processor = model_and_processor
    images = [load_image(REPO / f"baseline_images/pic_{i:02d}.jpg") for i in range(1, 11)]
    prompts = [format_prompt("vqa_opt", q) for q in QUESTIONS]  # different lengths -> real left padding
    decoding = get_decoding(decoding_name)
    single = [one_at_a_time(model, processor, img, p, decoding) for img, p in zip(images, prompts)]
    batched = generate_for_images(model, processor, images, prompts, decoding, batch_size=10)
    assert batched == single
    assert len(set(single)) > 1, "the tiny model should not answer everything identically"
    # the image matters: one question on the ten pictures gets several different answers, so equal
    # batched and single answers also show that every question met its own image
    same_question = [one_at_a_time(model, processor, img, prompts[0], decoding) for img in images]
    assert len(set(same_question)) >= 3, same_question
    assert generate_for_images(model, processor, images, [prompts[0]] * 10, decoding, batch_size=10) == same_question
    # shared images: every prompt on image 0, encoded once
    shared = generate_for_images(model, processor, [images[0]] * 10, prompts, decoding, batch_size=10)
    assert shared == [one_at_a_time(model, processor, images[0], p, decoding) for p in prompts]


def test_batched_captions_equal_single(model_and_processor):
    model, processor = model_and_processor
    images = [load_image(REPO / f"baseline_images/pic_{i:02d}.jpg") for i in range(1, 5)]
    decoding = get_decoding("caption_beam5")
    batched = generate_for_images(model, processor, images, [""] * 4, decoding, batch_size=4)
    for img, cap in zip(images, batched):
        out = model.generate(**processor(images=[img], return_tensors="pt"), **decoding)
        assert cap == first_line(processor.tokenizer.decode(out[0], skip_special_tokens=True))
