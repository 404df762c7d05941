from mllm_unlearn.eval import EvalConfig, evaluate


def test_few_shot_demo_people_are_not_scored_and_choice_is_seeded(benchmark, tiny_vlm):
    vlm = tiny_vlm("llava")
    cfg = EvalConfig(tasks=("mcq",), splits=("retain",), few_shot=1, progress=False)
    zero = evaluate(vlm, benchmark, cfg=EvalConfig(tasks=("mcq",), splits=("retain",), progress=False))
    first = evaluate(vlm, benchmark, cfg=cfg)
    again = evaluate(vlm, benchmark, cfg=cfg)
    scored = {p["person_id"] for p in first["predictions"]}
    everyone = {p["person_id"] for p in zero["predictions"]}
    assert len(everyone - scored) == 1  # one demonstration person, excluded from scoring
    assert first["predictions"] == again["predictions"]  # seeded choice, same figures
    cell = first["figures"]["retain"]["vqa"]
    assert cell["mcq_count"] == zero["figures"]["retain"]["vqa"]["mcq_count"] - 5
