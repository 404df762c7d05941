"""The tiny models' word-level tokenizer decodes apostrophes inside words as written (token ids unchanged)."""
from types import SimpleNamespace

from torch import nn

from mllm_unlearn.models.base import VLM, is_word_level, join_word_apostrophes
from mllm_unlearn.models.tiny import build_word_tokenizer, words_of

TEXT = "Ann O'Rourke isn't from Côte d'Ivoire, she said: 'no'."


def test_apostrophes_inside_words_round_trip_and_the_ids_stay_the_same():
    tokenizer = build_word_tokenizer(words_of([TEXT]), "llava")
    ids = tokenizer(TEXT)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids)[1:4] == ["O", "'", "Rourke"]  # the vocabulary splits as before
    assert "O ' Rourke" in tokenizer.decode(ids, skip_special_tokens=True)  # what the bare decoder writes
    vlm = VLM(model=nn.Identity(), processor=SimpleNamespace(tokenizer=tokenizer), adapter=None)
    decoded = vlm.decode([ids])[0]
    assert decoded.startswith("Ann O'Rourke isn't from Côte d'Ivoire,")
    assert is_word_level(tokenizer)
    assert join_word_apostrophes("rock ' n ' roll") == "rock'n'roll" and join_word_apostrophes("' no '") == "' no '"
