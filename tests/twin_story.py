"""What the offline twin shows on easy-VQA: accuracy per kind of question (colour, shape, yes/no), how
many answers are one word, and the shuffled-image control that proves the answers come from the image.

Used by tests/test_pipeline.py and `python -m bench.twin_story`, on the files the README's quick start
writes (vqav2_baseline.jsonl, vqav2_finetuned.jsonl, lora_adapter/).
"""

from __future__ import annotations

import random
from typing import Sequence

from twin import COLORS, SHAPES

KINDS = ("colour", "shape", "yes/no")


def question_kind(gt_answers: Sequence[str]) -> str:
    """easy-VQA's three kinds of question, told by their (unanimous) answer."""
    answer = gt_answers[0]
    return "colour" if answer in COLORS else "shape" if answer in SHAPES else "yes/no"


def attribute_shown(row: dict) -> bool:
    """A yes/no question whose colour or shape is in the picture ("is there a red shape?" answered yes,
    "is there not a red shape?" answered no). easy-VQA asks most yes/no questions about what is absent,
    so always answering by the question's form scores about 80% on yes/no; these are the ones that tell."""
    if question_kind(row["gt_answers"]) != "yes/no":
        return False
    words = row["question"].rstrip("?").split()
    return (row["gt_answers"][0] == "yes") != ("not" in words or "no" in words)


def accuracy_by_kind(rows: Sequence[dict]) -> dict[str, dict]:
    """{"overall"|kind: {"n", "accuracy" (VQA accuracy, %)}} over scored rows."""
    groups: dict[str, list[float]] = {"overall": []}
    for r in rows:
        if r.get("vqa_accuracy") is None:
            continue
        groups["overall"].append(r["vqa_accuracy"])
        groups.setdefault(question_kind(r["gt_answers"]), []).append(r["vqa_accuracy"])
    return {k: {"n": len(v), "accuracy": round(100 * sum(v) / len(v), 1) if v else 0.0}
            for k, v in groups.items()}


def one_word_share(rows: Sequence[dict]) -> float:
    """Share (%) of answers that are one word, as the model wrote them."""
    said = [r.get("raw_answer", r.get("answer")) for r in rows if r.get("answer") is not None]
    return round(100 * sum(len(s.split()) == 1 for s in said) / len(said), 1)


def shuffled_image_control(model, processor, rows: Sequence[dict], prompt: str, decoding: dict,
                           seed: int = 0, batch_size: int = 32) -> dict:
    """Answer each colour question with the image of another colour question (a seeded shuffle), and
    score against the question's own answers. A model that reads the image falls to chance (the share
    of pairs whose images happen to share the colour); one that guesses from the question text does not."""
    from src.images import load_image
    from src.inference import generate_for_images
    from src.prompts import format_prompt
    from src.vqa_eval import normalize_answer, vqa_accuracy

    colour = [r for r in rows if question_kind(r["gt_answers"]) == "colour"]
    rng = random.Random(seed)
    donors = list(colour)
    rng.shuffle(donors)
    images = [load_image(d["image_path"]) for d in donors]
    answers = generate_for_images(model, processor, images, [format_prompt(prompt, r["question"]) for r in colour],
                                  decoding, batch_size)
    scores = [vqa_accuracy(normalize_answer(a), r["gt_answers"]) for a, r in zip(answers, colour)]
    follows_image = sum(normalize_answer(a) == d["gt_answers"][0] for a, d in zip(answers, donors))
    return {"n": len(colour), "accuracy": round(100 * sum(scores) / len(scores), 1),
            "answers_naming_the_shown_colour": round(100 * follows_image / len(colour), 1)}
