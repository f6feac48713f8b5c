"""easy-VQA (the dataset the `easy-vqa` package ships) converted once into the official VQA JSON layout
under <data_dir>/easy_vqa/, so that it is read like VQAv2 (src/data.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .errors import UserError
from .files import atomic_write_text, replace_folder
from .locks import exclusive_lock


def _easy_vqa_complete(root: Path) -> bool:
    """True when CONVERTED exists and every file it lists is there: the image counts and the JSON sizes
    it recorded (written last, so an interrupted conversion is never trusted)."""
    try:
        expected = json.loads((root / "CONVERTED").read_text())
        for split, want in expected["splits"].items():
            if sum(1 for _ in (root / "images" / split).iterdir()) != want["images"]:
                return False
            for name, size in want["files"].items():
                if (root / name).stat().st_size != size:
                    return False
        return True
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def prepare_easy_vqa(data_dir: str | Path = "data") -> Path:
    """Convert the `easy-vqa` package's data once into <data_dir>/easy_vqa/ (its one answer becomes the ten
    annotators', its test set our "val"); concurrent runs wait on a lock, an interrupted conversion is redone."""
    data_dir = Path(data_dir)
    root = data_dir / "easy_vqa"
    if _easy_vqa_complete(root):
        return root
    try:
        import easy_vqa
    except ImportError:
        raise UserError("dataset easy_vqa needs the easy-vqa package: pip install easy-vqa") from None
    with exclusive_lock(data_dir / "easy_vqa.lock", f"the easy-VQA conversion in {data_dir}", wait=True):
        if _easy_vqa_complete(root):  # another run finished it while we waited
            return root
        if root.exists():
            print(f"note: {root} is incomplete (an interrupted conversion?); converting it again", flush=True)
        tmp = data_dir / ".tmp-easy_vqa"
        shutil.rmtree(tmp, ignore_errors=True)  # from a killed run; we hold the lock
        _convert_easy_vqa(easy_vqa, tmp)
        replace_folder(tmp, root)
    return root


def _convert_easy_vqa(easy_vqa, out: Path) -> None:
    marker = {"source": "easy-VQA (pip package easy-vqa), converted to the VQA v2 format", "splits": {}}
    for split, (get_q, get_imgs) in {
        "train": (easy_vqa.get_train_questions, easy_vqa.get_train_image_paths),
        "val": (easy_vqa.get_test_questions, easy_vqa.get_test_image_paths),
    }.items():
        texts, answers, image_ids = get_q()
        questions, annotations = [], []
        for qid, (text, answer, image_id) in enumerate(zip(texts, answers, image_ids)):
            questions.append({"image_id": image_id, "question": text, "question_id": qid})
            annotations.append({
                "question_type": " ".join(text.rstrip("?").split()[:3]),  # VQAv2-style: the first three words
                "multiple_choice_answer": answer,
                "answers": [{"answer": answer, "answer_confidence": "yes", "answer_id": k + 1} for k in range(10)],
                "image_id": image_id,
                "answer_type": "yes/no" if answer in ("yes", "no") else "other",
                "question_id": qid,
            })
        (out / "images" / split).mkdir(parents=True)
        images = get_imgs()
        for image_id, src in images.items():
            shutil.copyfile(src, out / "images" / split / f"{image_id}.png")
        info = {"description": marker["source"], "split": split}
        files = {}
        for name, obj in ((f"{split}_questions.json", {"info": info, "task_type": "Open-Ended", "data_type": "easy_vqa",
                                                        "data_subtype": split, "questions": questions}),
                          (f"{split}_annotations.json", {"info": info, "data_type": "easy_vqa", "data_subtype": split,
                                                          "annotations": annotations})):
            atomic_write_text(out / name, json.dumps(obj))
            files[name] = (out / name).stat().st_size
        marker["splits"][split] = {"questions": len(questions), "images": len(images), "files": files}
    (out / "CONVERTED").write_text(json.dumps(marker, indent=2) + "\n")  # last: it vouches for the rest
