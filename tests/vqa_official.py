"""The official VQA evaluation, transcribed for checking src/vqa_eval.py: the reference of
tests/test_vqa_eval.py and bench/bench_vqa_eval.py.

A line-by-line transcription of GT-Vision-Lab/VQA (commit a013f00, 2021): `VQA` and `VQA.loadRes`
from PythonHelperTools/vqaTools/vqa.py and `VQAEval.evaluate` from
PythonEvaluationTools/vqaEvaluation/vqaEval.py, with the printing and the progress bar left out and
nothing made faster. Quirks kept on purpose: questions are taken in results-file order (repeated ids
included), ground-truth answer objects are processed in place, so a repeated id is scored again on
already-processed answers, and the leave-one-out drops every answer object equal to the current one.
It shares no code with src/vqa_eval.py; the normalisation tables are read from
src/vqa_normalization.json, the official tables verbatim (with their licence notice).

    from tests.vqa_official import official_metrics, official_scores
    metrics = official_metrics("questions.json", "annotations.json", "results.json")  # or loaded objects
    accuracies, predictions, gt_lists = official_scores(["two"], [["2", "2", "3"]])

    python -m tests.vqa_official QUESTIONS.json ANNOTATIONS.json RESULTS.json METRICS_OUT.json
"""

from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path

_TABLES = json.loads((Path(__file__).resolve().parents[1] / "src" / "vqa_normalization.json")
                     .read_text(encoding="utf-8"))


def _load(file):
    """json.load of a path, as the official tool does; loaded objects (a change for checking) are copied,
    since the tool edits what it loads."""
    if isinstance(file, (str, Path)):
        with open(file, encoding="utf-8") as f:
            return json.load(f)
    return copy.deepcopy(file)


class VQA:
    def __init__(self, annotation_file=None, question_file=None):
        self.dataset, self.questions, self.qa, self.qqa, self.imgToQA = {}, {}, {}, {}, {}
        if annotation_file is not None and question_file is not None:
            self.dataset = _load(annotation_file)
            self.questions = _load(question_file)
            self.createIndex()

    def createIndex(self):
        imgToQA = {ann["image_id"]: [] for ann in self.dataset["annotations"]}
        qa = {ann["question_id"]: [] for ann in self.dataset["annotations"]}
        qqa = {ann["question_id"]: [] for ann in self.dataset["annotations"]}
        for ann in self.dataset["annotations"]:
            imgToQA[ann["image_id"]] += [ann]
            qa[ann["question_id"]] = ann
        for ques in self.questions["questions"]:
            qqa[ques["question_id"]] = ques
        self.qa, self.qqa, self.imgToQA = qa, qqa, imgToQA

    def getQuesIds(self):
        return [ann["question_id"] for ann in self.dataset["annotations"]]

    def loadRes(self, resFile, quesFile):
        res = VQA()
        res.questions = _load(quesFile)
        for key in ("info", "task_type", "data_type", "data_subtype", "license"):
            res.dataset[key] = copy.deepcopy(self.questions[key])
        anns = _load(resFile)
        assert type(anns) == list, "results is not an array of objects"  # noqa: E721
        annsQuesIds = [ann["question_id"] for ann in anns]
        assert set(annsQuesIds) == set(self.getQuesIds()), "Results do not correspond to current VQA set."
        for ann in anns:
            quesId = ann["question_id"]
            if res.dataset["task_type"] == "Multiple Choice":
                assert ann["answer"] in self.qqa[quesId]["multiple_choices"], "predicted answer is not one of the multiple choices"
            qaAnn = self.qa[quesId]
            ann["image_id"] = qaAnn["image_id"]
            ann["question_type"] = qaAnn["question_type"]
            ann["answer_type"] = qaAnn["answer_type"]
        res.dataset["annotations"] = anns
        res.createIndex()
        return res


class VQAEval:
    def __init__(self, vqa, vqaRes, n=2):
        self.n = n
        self.accuracy, self.evalQA, self.evalQuesType, self.evalAnsType = {}, {}, {}, {}
        self.vqa, self.vqaRes = vqa, vqaRes
        self.resAns = {}  # kept for checking (not in the original): the prediction as last compared
        self.params = {"question_id": vqaRes.getQuesIds()}
        self.contractions = dict(_TABLES["contractions"])
        self.manualMap = dict(_TABLES["number_words"])
        self.articles = list(_TABLES["articles"])
        self.periodStrip = re.compile(r"(?!<=\d)(\.)(?!\d)")
        self.commaStrip = re.compile(r"(\d)(\,)(\d)")
        self.punct = list(_TABLES["punctuation"])

    def evaluate(self):
        quesIds = [quesId for quesId in self.params["question_id"]]
        gts, res = {}, {}
        for quesId in quesIds:
            gts[quesId] = self.vqa.qa[quesId]
            res[quesId] = self.vqaRes.qa[quesId]
        accQA, accQuesType, accAnsType = [], {}, {}
        for quesId in quesIds:
            for ansDic in gts[quesId]["answers"]:
                ansDic["answer"] = ansDic["answer"].replace("\n", " ")
                ansDic["answer"] = ansDic["answer"].replace("\t", " ")
                ansDic["answer"] = ansDic["answer"].strip()
            resAns = res[quesId]["answer"]
            resAns = resAns.replace("\n", " ")
            resAns = resAns.replace("\t", " ")
            resAns = resAns.strip()
            gtAcc = []
            gtAnswers = [ans["answer"] for ans in gts[quesId]["answers"]]
            if len(set(gtAnswers)) > 1:
                for ansDic in gts[quesId]["answers"]:
                    ansDic["answer"] = self.processPunctuation(ansDic["answer"])
                    ansDic["answer"] = self.processDigitArticle(ansDic["answer"])
                resAns = self.processPunctuation(resAns)
                resAns = self.processDigitArticle(resAns)
            self.resAns[quesId] = resAns  # kept for checking (not in the original)
            for gtAnsDatum in gts[quesId]["answers"]:
                otherGTAns = [item for item in gts[quesId]["answers"] if item != gtAnsDatum]
                matchingAns = [item for item in otherGTAns if item["answer"] == resAns]
                acc = min(1, float(len(matchingAns)) / 3)
                gtAcc.append(acc)
            quesType = gts[quesId]["question_type"]
            ansType = gts[quesId]["answer_type"]
            avgGTAcc = float(sum(gtAcc)) / len(gtAcc)
            accQA.append(avgGTAcc)
            accQuesType.setdefault(quesType, []).append(avgGTAcc)
            accAnsType.setdefault(ansType, []).append(avgGTAcc)
            self.evalQA[quesId] = round(100 * avgGTAcc, self.n)
            self.evalQuesType.setdefault(quesType, {})[quesId] = round(100 * avgGTAcc, self.n)
            self.evalAnsType.setdefault(ansType, {})[quesId] = round(100 * avgGTAcc, self.n)
        self.accQA = accQA  # kept for checking (not in the original)
        self.setAccuracy(accQA, accQuesType, accAnsType)

    def processPunctuation(self, inText):
        outText = inText
        for p in self.punct:
            if (p + " " in inText or " " + p in inText) or (re.search(self.commaStrip, inText) is not None):
                outText = outText.replace(p, "")
            else:
                outText = outText.replace(p, " ")
        outText = self.periodStrip.sub("", outText, re.UNICODE)  # sic: re.UNICODE (32) lands in `count`
        return outText

    def processDigitArticle(self, inText):
        outText = []
        tempText = inText.lower().split()
        for word in tempText:
            word = self.manualMap.setdefault(word, word)
            if word not in self.articles:
                outText.append(word)
        for wordId, word in enumerate(outText):
            if word in self.contractions:
                outText[wordId] = self.contractions[word]
        outText = " ".join(outText)
        return outText

    def setAccuracy(self, accQA, accQuesType, accAnsType):
        self.accuracy["overall"] = round(100 * float(sum(accQA)) / len(accQA), self.n)
        self.accuracy["perQuestionType"] = {
            quesType: round(100 * float(sum(accQuesType[quesType])) / len(accQuesType[quesType]), self.n)
            for quesType in accQuesType}
        self.accuracy["perAnswerType"] = {
            ansType: round(100 * float(sum(accAnsType[ansType])) / len(accAnsType[ansType]), self.n)
            for ansType in accAnsType}


def official_evaluation(questions, annotations, results) -> VQAEval:
    """The official tool run on three files (paths, or loaded objects, which are left untouched)."""
    vqa = VQA(annotations, questions)
    vqaRes = vqa.loadRes(results, questions)
    vqaEval = VQAEval(vqa, vqaRes, n=2)
    vqaEval.evaluate()
    return vqaEval


def official_metrics(questions, annotations, results) -> dict:
    """The official numbers in the layout `python -m bench.vqa_eval --out` writes: {"overall",
    "perAnswerType", "perQuestionType", "perQuestion": {"<question_id>": %}}."""
    vqaEval = official_evaluation(questions, annotations, results)
    return {"overall": vqaEval.accuracy["overall"], "perAnswerType": vqaEval.accuracy["perAnswerType"],
            "perQuestionType": vqaEval.accuracy["perQuestionType"],
            "perQuestion": {str(q): acc for q, acc in vqaEval.evalQA.items()}}


def official_scores(predictions: list, gt_answer_lists: list) -> tuple[list, list, list]:
    """Each question scored by the official tool on its own (one file set, answer_ids 1..n): the unrounded
    accuracy, and the prediction and ground truths as the tool compared them."""
    info = {"info": {}, "license": {}, "data_type": "mscoco", "data_subtype": "val2014"}
    questions = dict(info, task_type="Open-Ended", questions=[
        {"image_id": 0, "question": "?", "question_id": i} for i in range(len(predictions))])
    annotations = dict(info, annotations=[
        {"question_id": i, "image_id": 0, "question_type": "q", "answer_type": "a",
         "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": j + 1} for j, a in enumerate(gts)]}
        for i, gts in enumerate(gt_answer_lists)])
    results = [{"question_id": i, "answer": p} for i, p in enumerate(predictions)]
    vqaEval = official_evaluation(questions, annotations, results)
    gt_lists = [[a["answer"] for a in vqaEval.vqa.qa[i]["answers"]] for i in range(len(predictions))]
    return vqaEval.accQA, [vqaEval.resAns[i] for i in range(len(predictions))], gt_lists


def official_normalization(text: str) -> str:
    """One answer as the tool compares it when the ground truths disagree: cleaned, then its
    processPunctuation and processDigitArticle."""
    vqa = VQA()
    vqa.dataset = {"annotations": []}
    vqaEval = VQAEval(vqa, vqa)
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return vqaEval.processDigitArticle(vqaEval.processPunctuation(text))


if __name__ == "__main__":  # python -m tests.vqa_official QUESTIONS ANNOTATIONS RESULTS OUT
    with open(sys.argv[4], "w", encoding="utf-8") as out:
        json.dump(official_metrics(*sys.argv[1:4]), out)
