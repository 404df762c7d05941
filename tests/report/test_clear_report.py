"""CLEAR's reports: every metric in both report.md and report.html with its item count, a warning on
figures from fewer than 20 items, the forget-quality test's power, and why a model utility is 0."""
from mllm_unlearn.report import render_html, render_markdown


def clear_results() -> dict:
    def task(prob: float, rouge: float, tr: float, count: int) -> dict:
        return {"vqa": {"prob": prob, "rougeL_recall": rouge, "truth_ratio": tr, "answer_nll": 1.0, "count": count}}

    figures = {"forget": task(0.41, 0.30, 0.62, 6), "forget_facerec": task(0.55, 0.10, 0.70, 6),
               "retain": task(0.40, 0.31, 0.52, 30), "retain_facerec": task(0.50, 0.0, 0.45, 30),
               "real_faces": task(0.30, 0.0, 0.21, 12), "real_world": task(0.35, 0.0, 0.18, 25)}
    evaluation = {"figures": figures, "summary": {"model_utility": 0.0, "forget_quality": 0.93, "ks_statistic": 0.33}}
    return {"protocol": "clear",
            "config": {"name": "c", "method": "ga", "benchmark_name": "clear:world", "family": "llava", "model_path": "x",
                       "seed": 0, "gold_model_path": "g", "eval": {}},
            "vanilla": evaluation, "unlearned": evaluation, "gold": evaluation,
            "robustness": {}, "cost": {"wall_time_s": {"evaluate vanilla": 1.0}}}


def test_clear_html_has_every_metric_of_the_markdown_with_item_counts_and_warnings():
    results = clear_results()
    markdown, page = render_markdown(results), render_html([results])
    for text in (markdown, page):
        for label in ("Prob.", "ROUGE-L recall", "Truth ratio", "Model utility (harmonic mean, non-forget tasks)",
                      "Forget quality (KS p-value of forget-caption TR vs gold)", "KS statistic (forget captions)",
                      "Items", "6 ⚠ fewer than 20 items", "6 per model ⚠ fewer than 20 items",
                      "0.410 → 0.410 (0.410)", "0.93"):
            assert label in text, label
        assert "30" in text and "12 ⚠ fewer than 20 items" in text
        assert "over 6 forget captions per model" in text and "0.78 or more" in text  # 1.36·√(2/6)
        assert "utility is 0 because it is the harmonic mean" in text
        assert "ROUGE-L recall on Retain FaceRec; ROUGE-L recall on Real Faces; ROUGE-L recall on Real World" in text
    assert "| Forget (captions) | VQA (image + text) | 0.410 → 0.410 (0.410) | 0.300 → 0.300 (0.300) | " \
           "0.620 → 0.620 (0.620) | 6 ⚠ fewer than 20 items |" in markdown
    assert "| Model utility (harmonic mean, non-forget tasks) | 0 | 0 | 0 | 97 |" in markdown
    assert "<td>6 ⚠ fewer than 20 items</td>" in page


def test_no_warning_and_no_zero_utility_note_when_neither_applies():
    results = clear_results()
    for cell in (c["vqa"] for c in results["vanilla"]["figures"].values()):
        cell["count"], cell["rougeL_recall"] = 40, 0.5
    results["vanilla"]["summary"]["model_utility"] = 0.41
    markdown = render_markdown(results)
    assert "fewer than 20 items" not in markdown and "utility is 0" not in markdown
    assert "over 40 forget captions per model" in markdown
