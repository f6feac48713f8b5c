"""What one VQA question is (`VQASample`), whichever reader made it (src.preflight.build_samples checks
every entry on the way in), and the answer it is fine-tuned on."""

from collections import Counter
from dataclasses import dataclass


@dataclass
class VQASample:
    """One question. A question of VQAv2 test-dev / test has no public answers: answers is [] and
    multiple_choice_answer, answer_type and question_type are None (`has_answers` is False)."""
    question_id: int
    image_id: int
    image_path: str
    question: str
    answers: list[str]  # the ten human answers; [] where the split has none
    multiple_choice_answer: str | None
    answer_type: str | None
    question_type: str | None

    @property
    def has_answers(self) -> bool:
        return bool(self.answers)


def training_answer(sample: VQASample) -> str:
    """The most frequent of the ten answers; ties go to multiple_choice_answer, then to the first seen."""
    counts = Counter(a.strip() for a in sample.answers)
    first, best = counts.most_common(1)[0]  # of equal counts, the first seen
    mca = sample.multiple_choice_answer.strip()
    return mca if counts[mca] == best else first
