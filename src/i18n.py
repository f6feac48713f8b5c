"""Every user-facing string of the demo, the comparison report, summary.txt and the charts, in one place.

`texts(lang)` returns a function `tr(key, **values)`: the string of that language with `{values}`
filled in. `LANG = "zh"` (the default of inference_demo.py and compare_baseline_finetuned.py) or "en".
Model answers, questions, file names and numbers are never translated; a test checks that both
languages have the same keys and the same placeholders.
"""

from __future__ import annotations

from typing import Callable

from .errors import UserError

LANGS = ("zh", "en")

_ZH = {
    # --- numbers, shared by summary.txt, report.html, the demo's comparison tab and the console
    "title": "BLIP-2 在 VQAv2 上：零样本基线 vs QLoRA 微调",
    "overall": "总体",
    "answer_type": "答案类型",
    "n": "题数",
    "baseline": "基线",
    "finetuned": "微调后",
    "change_ci": "变化 [95% CI]",
    "vqa_accuracy": "VQA 准确率",
    "exact_match": "精确匹配",
    "better_worse_same": "变好 / 变差 / 不变",
    "outcomes": "逐题（按 VQA 准确率）：变好 {better}，变差 {worse}，不变 {same}；回答文字变化 {changed} 题",
    "questions_compared": "对比的题数：{n}",
    "questions_scored": "评分的题数：{n}",
    "excluded": "（排除的出错行：{excluded}；基线出错行 {base_errors}{ft_errors}）",
    "excluded_ft": "，微调后出错行 {n}",
    "processing": "答案后处理（官方 VQA 规范化）改动了 {who} 的 {n} / {total} 个回答",
    "processing_both": "答案后处理（官方 VQA 规范化）改动的回答：基线 {base} / {total}，微调后 {ft} / {total}",
    "mean_length": "平均回答长度（词）：基线 {base}",
    "mean_length_ft": "，微调后 {ft}",
    "interval": "置信区间：{confidence} 配对百分位 bootstrap，{unit}，重采样 {resamples} 次，随机种子 {seed}",
    "unit_image": "按图片整组重采样（{n} 张图片：同一张图片的题目一起抽取）",
    "unit_question": "按题目重采样（{n} 道题：结果文件里没有 image_id）",
    "partial": "部分对比（--allow_partial=True）：只对比两份文件共有的 {common} 个题号（仅基线有 {only_base} 个，"
               "仅微调后有 {only_ft} 个，已略去）",
    "missing_ft": "缺少微调结果 {path}；请先运行 `python evaluate_vqav2_finetuned.py`，再重新运行本脚本",
    "file_line": "{who}：{path}（模型 {model}，适配器 {adapter}，提示词 {prompt}）",
    "decoding": "解码：{decoding}",
    "none": "无",
    "warning": "警告：{text}",
    "console_heading": "基线 vs 微调后，同样的 {n} 道题",
    "console_interval": "变化：百分点，方括号内是 95% 置信区间（配对 bootstrap，{unit}）",
    # --- groups of example cases
    "group_improved": "变好",
    "group_worsened": "变差",
    "group_unchanged": "不变",
    "group_correct": "基线答对",
    "group_wrong": "基线答错",
    # --- charts and case pictures
    "chart_accuracy_title": "VQA 准确率（%）",
    "chart_em_title": "精确匹配（%）",
    "chart_change_title": "变化（百分点，95% 配对 bootstrap 置信区间）",
    "chart_length_title": "回答长度",
    "chart_length_title_both": "微调前后的回答长度",
    "chart_length_x": "每个回答的词数",
    "chart_length_y": "题数",
    "chart_length_legend": "{who}（平均 {mean} 词）",
    "chart_demo_title": "演示图片：基座模型 → 微调后",
    "chart_caption": "描述",
    "chart_no_ft_row": "—（无微调结果）",
    "image_not_found": "找不到图片",
    "no_path": "（无路径）",
    "case_header": "{group} · 题号 {qid} · {answer_type}",
    "case_question": "问：{question}",
    "case_gt": "标准答案：{answers}",
    "case_raw": "模型原文：{raw}",
    "loss_per_step": "每步损失",
    "loss_moving_average": "滑动平均（{k} 步）",
    "loss_x": "优化器步数",
    "loss_y": "训练损失（答案词元）",
    # --- report.html
    "report_title": "BLIP-2 VQAv2：基线 vs 微调",
    "report_generated": "生成于 {when}",
    "report_baseline_file": "基线：{path}（模型 {model}，提示词 {prompt}，解码 {decoding}）",
    "report_ft_file": "微调后：{path}（适配器 {adapter}）",
    "report_missing_ft": "缺少微调结果：找不到 {path}，这是一份只有基线的报告（baseline-only）。"
                         "请运行 python evaluate_vqav2_finetuned.py，再重新运行 python compare_baseline_finetuned.py。",
    "report_partial": "部分对比（--allow_partial=True）：只对比两份文件共有的 {common} 个题号；"
                      "仅基线有的 {only_base} 个与仅微调后有的 {only_ft} 个已略去。",
    "card_questions": "对比的题数",
    "card_questions_baseline": "评分的题数",
    "card_excluded": "排除 {n} 个出错行",
    "card_change": "变化 {diff} 个百分点，95% 置信区间 [{low}, {high}]",
    "card_percent": "百分比",
    "card_outcomes_sub": "逐题，按 VQA 准确率",
    "card_processing": "后处理改动的回答（基线 / 微调后）",
    "card_processing_sub": "原始回答经官方 VQA 规范化后不同",
    "h_per_type": "按答案类型",
    "h_charts": "图表",
    "h_cases": "案例",
    "cases_note": "每组最多 {k} 个，随机种子 {seed}；徽章是该回答的 VQA 准确率（也见 contact_sheet.png 与 cases/）",
    "cases_group": "{group}（{shown} / {total}）",
    "cases_more": "再显示 {n} 个",
    "h_demo": "演示图片",
    "demo_image": "图片",
    "demo_caption_base": "描述，基座模型",
    "demo_caption_ft": "描述，微调后",
    "demo_question": "问题",
    "demo_answer_base": "回答，基座模型",
    "demo_answer_ft": "回答，微调后",
    "demo_missing": "找不到 {path}（{hint}），{who}一列为空。",
    "demo_missing_base_hint": "python create_baseline.py",
    "demo_missing_ft_hint": "带适配器运行 python create_baseline.py --adapter_dir=outputs/lora_adapter",
    "h_questions": "全部题目（{n}）",
    "filter_all": "全部",
    "col_question": "问题",
    "col_gt": "标准答案",
    "col_base_answer": "基线回答",
    "col_ft_answer": "微调后回答",
    "col_change": "变化",
    "outcome_better": "变好",
    "outcome_worse": "变差",
    "outcome_same": "不变",
    "raw_label": "原文",
    "report_footer": "分数：官方 VQA 准确率（src/vqa_eval.py），由回答重新计算。置信区间：{confidence} 配对百分位 "
                     "bootstrap，{unit}，重采样 {resamples} 次，随机种子 {seed}。由 compare_baseline_finetuned.py 生成。",
    # --- the demo
    "demo_title": "BLIP-2 零样本 vs QLoRA 微调",
    "demo_heading": "## BLIP-2 视觉问答演示\n{who} · {mode}",
    "demo_mode_adapter": "已加载 LoRA 适配器 {adapter}：每个问题都由基座模型（关闭适配器）和微调后的模型（打开适配器）并排回答。",
    "demo_mode_base": "未加载 LoRA 适配器：只有基座模型回答（用 python finetune_vqav2_lora.py 训练一个{where}）。",
    "demo_mode_where": "，预期位置 {path}",
    "tab_ask": "提问",
    "tab_comparison": "对比结果",
    "image_label": "图片（上传、粘贴、拖入或摄像头；最大 {mb} MB）",
    "question_label": "问题",
    "question_placeholder": "就这张图提一个问题（模型用英文训练，英文问题效果最好）",
    "ask": "提问",
    "ready": "上传图片或点击下方示例，然后点“提问”。",
    "base_heading": "#### 基座模型（零样本）",
    "ft_heading": "#### 微调后（打开 LoRA 适配器）",
    "caption_label": "描述",
    "answer_label": "回答",
    "examples_label": "示例图片（{folder}/）",
    "settings_label": "本演示的设置",
    "cannot_answer": "**无法回答：** {problems}",
    "cannot_use": "**无法使用这个文件：** {problem}",
    "image_ok": "图片 {name}（{w}x{h}）。输入问题后点“提问”。",
    "upload_first": "请先上传图片（或点击一个示例）。",
    "too_large": "{name} 太大：{mb} MB（上限 {limit} MB），请上传更小的图片。",
    "question_empty": "问题是空的：请输入问题，例如 “What is in the image?”",
    "question_too_long": "问题太长（{n} 个字符，最多 {limit}）。",
    "problem_not_image": "{name} 不是图片（或格式不受支持）",
    "problem_pixels": "{name} 的像素太多，请先缩小",
    "problem_corrupt": "{name} 无法解码（文件可能不完整或已损坏）",
    "problem_empty": "{name} 是空文件",
    "problem_missing": "找不到 {name}",
    "gpu_oom": "GPU 显存不足（是否有其他程序在用？）；请重试，或用 --quantization=4bit 重启演示。",
    "answered_both": "由基座模型和微调后的模型（打开 LoRA 适配器）回答，用时 {seconds} 秒。",
    "answered_base": "由基座模型回答，用时 {seconds} 秒。",
    "reload": "刷新",
    "comparison_intro": "显示 {command} 写入 {folder}/ 的结果。",
    "charts_accuracy": "微调前后的准确率",
    "charts_length": "微调前后的回答长度",
    "charts_demo": "十张演示图片，微调前后",
    "charts_contact": "全部案例",
    "cases_label": "案例（点击放大）",
    "report_label": "report.html（下载后用浏览器打开）",
    "case_caption": "{group} #{i}（题号 {qid}）",
    "cmp_heading": "### BLIP-2 在 VQAv2 上：零样本基线 vs QLoRA 微调",
    "cmp_source": "来自 {path}，由 {command} 于 {when} 写入。完整报告：{report}。",
    "cmp_partial": "**部分对比：** 只对比两份文件都有的 {common} 个题目。",
    "cmp_compared": "**对比的题数：{n}**（模型 {model}，提示词 {prompt}，适配器 {adapter}）",
    "cmp_missing_ft": "缺少微调结果：运行 python evaluate_vqav2_finetuned.py，再运行 {command}。以下只有基线：",
    "cmp_no_answers": "### 没有可对比的答案\n\n{run} 是 {split} 划分的运行：这个划分的标准答案不公开，这里无法计分，也无法对比。"
                      "请把 {evalai} 提交到 EvalAI（VQA Challenge 的 {phase} 阶段）查看准确率。",
    "cmp_none_heading": "### 还没有对比结果",
    "cmp_none": "没有 {path}。先运行\n\n```\n{command}\n```\n\n（它对比 python create_vqav2_baseline.py 写的 "
                "outputs/vqav2_baseline.jsonl 与 python evaluate_vqav2_finetuned.py 写的 "
                "outputs/vqav2_finetuned.jsonl），然后点 **刷新**。",
    "cmp_broken": "### 无法读取 {path}\n\n{error}。请重新运行 {command} 生成它，然后点 **刷新**。",
    "warning_md": "**警告：** {text}",
}

_EN = {
    "title": "BLIP-2 on VQAv2: zero-shot baseline vs QLoRA fine-tuned",
    "overall": "overall",
    "answer_type": "answer type",
    "n": "n",
    "baseline": "baseline",
    "finetuned": "fine-tuned",
    "change_ci": "change [95% CI]",
    "vqa_accuracy": "VQA accuracy",
    "exact_match": "exact match",
    "better_worse_same": "better / worse / same",
    "outcomes": "per question (VQA accuracy): better {better}, worse {worse}, same {same}; "
                "answer text changed on {changed}",
    "questions_compared": "questions compared: {n}",
    "questions_scored": "questions scored: {n}",
    "excluded": "  (excluded error rows: {excluded}; error rows in baseline {base_errors}{ft_errors})",
    "excluded_ft": ", fine-tuned {n}",
    "processing": "answer processing (official VQA normalisation) changed {n} of {total} {who} answers",
    "processing_both": "answers changed by the answer processing (official VQA normalisation): "
                       "baseline {base} of {total}, fine-tuned {ft} of {total}",
    "mean_length": "answer length, mean words: baseline {base}",
    "mean_length_ft": ", fine-tuned {ft}",
    "interval": "interval: {confidence} paired percentile bootstrap, {unit}, {resamples} resamples, seed {seed}",
    "unit_image": "resampling whole images ({n} images: the questions about one image are drawn together)",
    "unit_question": "resampling questions ({n} questions: the result files have no image_id)",
    "partial": "PARTIAL COMPARISON (--allow_partial=True): only the {common} question ids present in both files are "
               "compared ({only_base} only in baseline, {only_ft} only in fine-tuned are left out)",
    "missing_ft": "fine-tuned: MISSING {path}; create it with `python evaluate_vqav2_finetuned.py`, then rerun this script",
    "file_line": "{who}: {path}  (model {model}, adapter {adapter}, prompt {prompt})",
    "decoding": "decoding: {decoding}",
    "none": "none",
    "warning": "warning: {text}",
    "console_heading": "baseline vs fine-tuned on the same {n} questions",
    "console_interval": "change: points, in brackets its 95% interval (paired bootstrap, {unit})",
    "group_improved": "improved",
    "group_worsened": "worsened",
    "group_unchanged": "unchanged",
    "group_correct": "baseline right",
    "group_wrong": "baseline wrong",
    "chart_accuracy_title": "VQA accuracy (%)",
    "chart_em_title": "exact match (%)",
    "chart_change_title": "change, points (95% paired bootstrap CI)",
    "chart_length_title": "answer length",
    "chart_length_title_both": "answer length before / after fine-tuning",
    "chart_length_x": "words per answer",
    "chart_length_y": "questions",
    "chart_length_legend": "{who} (mean {mean} words)",
    "chart_demo_title": "demo images: base model → fine-tuned",
    "chart_caption": "caption",
    "chart_no_ft_row": "— (no fine-tuned row)",
    "image_not_found": "image not found",
    "no_path": "(no path)",
    "case_header": "{group}  ·  question {qid}  ·  {answer_type}",
    "case_question": "Q: {question}",
    "case_gt": "Ground truth: {answers}",
    "case_raw": "model said: {raw}",
    "loss_per_step": "loss per step",
    "loss_moving_average": "moving average ({k} steps)",
    "loss_x": "optimizer step",
    "loss_y": "training loss (answer tokens)",
    "report_title": "BLIP-2 VQAv2: baseline vs fine-tuned",
    "report_generated": "generated {when}",
    "report_baseline_file": "baseline: {path} (model {model}, prompt {prompt}, decoding {decoding})",
    "report_ft_file": "fine-tuned: {path} (adapter {adapter})",
    "report_missing_ft": "Fine-tuned results missing: {path} was not found, so this is a baseline-only report. "
                         "Create them with python evaluate_vqav2_finetuned.py, then rerun "
                         "python compare_baseline_finetuned.py.",
    "report_partial": "Partial comparison (--allow_partial=True): only the {common} question ids present in both "
                      "files are compared; {only_base} only in the baseline and {only_ft} only in the fine-tuned "
                      "file are left out.",
    "card_questions": "questions compared",
    "card_questions_baseline": "questions scored",
    "card_excluded": "{n} excluded (error rows)",
    "card_change": "change {diff} points, 95% CI [{low}, {high}]",
    "card_percent": "percent",
    "card_outcomes_sub": "per question, by VQA accuracy",
    "card_processing": "answers changed by processing (baseline / fine-tuned)",
    "card_processing_sub": "raw answer differs after the official VQA normalisation",
    "h_per_type": "Per answer type",
    "h_charts": "Charts",
    "h_cases": "Examples",
    "cases_note": "up to {k} per group, chosen with seed {seed}; the badge is the answer's VQA accuracy "
                  "(also in contact_sheet.png and cases/)",
    "cases_group": "{group} ({shown} of {total})",
    "cases_more": "show {n} more",
    "h_demo": "Demo images",
    "demo_image": "image",
    "demo_caption_base": "caption, base model",
    "demo_caption_ft": "caption, fine-tuned",
    "demo_question": "question",
    "demo_answer_base": "answer, base model",
    "demo_answer_ft": "answer, fine-tuned",
    "demo_missing": "{path} not found ({hint}); the {who} column is empty.",
    "demo_missing_base_hint": "python create_baseline.py",
    "demo_missing_ft_hint": "python create_baseline.py --adapter_dir=outputs/lora_adapter",
    "h_questions": "Every question ({n})",
    "filter_all": "all",
    "col_question": "question",
    "col_gt": "ground truth",
    "col_base_answer": "baseline answer",
    "col_ft_answer": "fine-tuned answer",
    "col_change": "change",
    "outcome_better": "improved",
    "outcome_worse": "worsened",
    "outcome_same": "unchanged",
    "raw_label": "raw",
    "report_footer": "Scores: official VQA accuracy (src/vqa_eval.py), recomputed from the answers. Intervals: "
                     "{confidence} paired percentile bootstrap, {unit}, {resamples} resamples, seed {seed}. "
                     "Written by compare_baseline_finetuned.py.",
    "demo_title": "BLIP-2 zero-shot vs QLoRA fine-tuned",
    "demo_heading": "## BLIP-2 VQA demo\n{who} · {mode}",
    "demo_mode_adapter": "LoRA adapter {adapter} loaded: every question is answered by the base model (adapter "
                         "switched off) and by the fine-tuned model (adapter on), side by side.",
    "demo_mode_base": "No LoRA adapter loaded: only the base model answers (train one with "
                      "python finetune_vqav2_lora.py{where}).",
    "demo_mode_where": ", expected in {path}",
    "tab_ask": "Ask",
    "tab_comparison": "Comparison",
    "image_label": "Image (upload, paste, drop or webcam; at most {mb} MB)",
    "question_label": "Question",
    "question_placeholder": "Ask something about the picture",
    "ask": "Ask",
    "ready": "Upload an image or click an example, then press Ask.",
    "base_heading": "#### Base model (zero-shot)",
    "ft_heading": "#### Fine-tuned (LoRA adapter on)",
    "caption_label": "Caption",
    "answer_label": "Answer",
    "examples_label": "Examples ({folder}/)",
    "settings_label": "Settings of this demo",
    "cannot_answer": "**Cannot answer:** {problems}",
    "cannot_use": "**Cannot use this file:** {problem}",
    "image_ok": "Image {name} ({w}x{h}). Type a question and press Ask.",
    "upload_first": "Upload an image first (or click one of the examples).",
    "too_large": "{name} is too large: {mb} MB (the limit is {limit} MB); upload a smaller image.",
    "question_empty": 'The question is empty: type a question, e.g. "What is in the image?"',
    "question_too_long": "The question is too long ({n} characters, at most {limit}).",
    "problem_not_image": "{name} is not an image",
    "problem_pixels": "{name} has too many pixels",
    "problem_corrupt": "{name} cannot be decoded",
    "problem_empty": "{name} is empty",
    "problem_missing": "{name} not found",
    "gpu_oom": "the GPU ran out of memory (is another program using it?); try again, or restart the demo with "
               "--quantization=4bit.",
    "answered_both": "Answered by the base model and fine-tuned (LoRA adapter on) in {seconds} s.",
    "answered_base": "Answered by the base model in {seconds} s.",
    "reload": "Reload",
    "comparison_intro": "Shows what {command} wrote to {folder}/.",
    "charts_accuracy": "Accuracy before / after",
    "charts_length": "Answer length before / after",
    "charts_demo": "The ten demo images, before / after",
    "charts_contact": "All example cases",
    "cases_label": "Example cases (click to enlarge)",
    "report_label": "report.html (download, open in a browser)",
    "case_caption": "{group} #{i} (question {qid})",
    "cmp_heading": "### BLIP-2 on VQAv2: zero-shot baseline vs QLoRA fine-tuned",
    "cmp_source": "From {path}, written {when} by {command}. Full report: {report}.",
    "cmp_partial": "**Partial comparison:** only the {common} questions present in both files are compared.",
    "cmp_compared": "**Questions compared: {n}** (model {model}, prompt {prompt}, adapter {adapter})",
    "cmp_missing_ft": "Fine-tuned results are missing: run python evaluate_vqav2_finetuned.py, then {command} "
                      "again. Baseline only:",
    "cmp_no_answers": "### No answers to compare\n\n{run} is a {split} run: the answers of this split are not public, so "
                      "nothing can be scored or compared here. Submit {evalai} to EvalAI (VQA Challenge, phase {phase}) "
                      "for its accuracy.",
    "cmp_none_heading": "### No comparison results yet",
    "cmp_none": "There is no {path}. Make it with\n\n```\n{command}\n```\n\n(it compares outputs/vqav2_baseline.jsonl "
                "from python create_vqav2_baseline.py with outputs/vqav2_finetuned.jsonl from "
                "python evaluate_vqav2_finetuned.py), then press **Reload**.",
    "cmp_broken": "### Cannot read {path}\n\n{error}. Run {command} again to rewrite it, then press **Reload**.",
    "warning_md": "**Warning:** {text}",
}

_STRINGS = {"zh": _ZH, "en": _EN}


def check_lang(lang: str) -> str:
    if lang not in _STRINGS:
        raise UserError(f"--lang={lang!r} is not a language of this project; use --lang=zh or --lang=en")
    return lang


def texts(lang: str) -> Callable[..., str]:
    """tr(key, **values) for `lang`; values fill the {placeholders} of the string."""
    table = _STRINGS[check_lang(lang)]

    def tr(key: str, **values) -> str:
        return table[key].format(**values) if values else table[key]

    return tr


def all_strings() -> dict[str, dict[str, str]]:
    """{lang: {key: template}} (for the test that both languages agree)."""
    return {lang: dict(table) for lang, table in _STRINGS.items()}
