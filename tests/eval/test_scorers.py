from mllm_unlearn.eval import EvalConfig, Evaluator


def test_length_sorted_batches_return_records_in_item_order(benchmark, tiny_vlm):
    """Batched scoring orders prompts by length (less padding); the records must come back in
    the items' order, with the scores each item gets when scored alone."""
    vlm = tiny_vlm("llava")
    items = [i for i in benchmark.eval_splits["retain"] if i.task == "mcq"][::3]
    assert len({i.modality for i in items}) == 2  # mixed prompt lengths (with and without an image)
    batched = Evaluator(vlm, EvalConfig(batch_size=7, progress=False))
    alone = Evaluator(vlm, EvalConfig(batch_size=1, progress=False))
    records = batched.score_group(items, "mcq")
    assert [(r["question"], r["image"]) for r in records] == [(i.question, i.image_key) for i in items]
    assert [r["prediction"] for r in records] == [r["prediction"] for r in alone.score_group(items, "mcq")]
    order = batched._by_length(items, ())
    lengths = [batched.encoder.prompt(items[k])["input_ids"].shape[1] for k in order]
    assert lengths == sorted(lengths) and sorted(order) == list(range(len(items)))
