import numpy as np

from steps.training.batching import bucketed_batches, collate, padding_share, sorted_batches
from steps.training.tokenize import encode, length_stats, tokenize_split
from tests.fixtures import review_frame


def test_encode_truncates_and_keeps_real_tokens_only(tiny_tokenizer):
    texts = ["great phone", "the battery was very poor and the screen was junk after a week"]
    tokens = encode(texts, [1, 0], tiny_tokenizer, max_length=8)
    assert len(tokens) == 2
    assert tokens.lengths.tolist() == [4, 8]  # [CLS] great phone [SEP]; second cut at 8
    assert tokens[0].tolist() == tiny_tokenizer("great phone")["input_ids"]
    assert tokens[1][-1] == tiny_tokenizer.sep_token_id
    assert tokens.labels.tolist() == [1, 0] and tokens.pad_token_id == tiny_tokenizer.pad_token_id


def test_subset_and_length_stats(tiny_tokenizer):
    frame = review_frame(30)
    tokens = tokenize_split({"all": frame}, tiny_tokenizer, max_length=6)["all"]
    part = tokens.subset([5, 2])
    assert part[0].tolist() == tokens[5].tolist() and part[1].tolist() == tokens[2].tolist()
    assert part.labels.tolist() == [tokens.labels[5], tokens.labels[2]]
    stats = length_stats(tokens, max_length=6)
    assert stats["rows"] == 30 and stats["length_max"] == 6
    assert stats["truncated_share"] == 1.0  # every synthetic review has 6+ words


def test_bucketed_batches_cover_every_row_once_reproducibly():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 120, size=1003)
    batches = bucketed_batches(lengths, batch_size=16, seed=5)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(1003))
    assert all(len(b) <= 16 for b in batches)
    again = bucketed_batches(lengths, batch_size=16, seed=5)
    assert all((a == b).all() for a, b in zip(batches, again))
    other = bucketed_batches(lengths, batch_size=16, seed=6)
    assert any((a != b).any() if len(a) == len(b) else True for a, b in zip(batches, other))


def test_bucketing_pads_far_less_than_random_batches():
    rng = np.random.default_rng(1)
    lengths = rng.lognormal(3, 0.6, size=4000).astype(int) + 2
    random_batches = [rng.permutation(4000)[i:i + 16] for i in range(0, 4000, 16)]
    bucketed = padding_share(lengths, bucketed_batches(lengths, 16, seed=0))
    assert bucketed < 0.1 < padding_share(lengths, random_batches)
    assert padding_share(lengths, sorted_batches(lengths, 16)) <= bucketed


def test_collate_pads_to_the_longest_in_the_batch(tiny_tokenizer):
    tokens = encode(["great", "the phone was great"], [1, 1], tiny_tokenizer, max_length=32)
    ids, mask, labels = collate(tokens, [0, 1])
    assert ids.shape == (2, 6) and mask.sum(1).tolist() == [3, 6]
    assert ids[0, 3:].tolist() == [tokens.pad_token_id] * 3
    assert labels.tolist() == [1, 1]


def test_word_piece_cache_gives_the_tokenizers_ids(tiny_tokenizer):
    """ASCII texts take the cached path; every text, also the ones sent on to the tokenizer (non-ASCII, a special
    token's text), gets exactly the tokenizer's ids, truncation included."""
    import random

    from steps.data.tokens import WordPieceCache, _encode_with

    rng = random.Random(0)
    characters = [chr(i) for i in range(128)]
    words = ["great", "PHONE", "works!", "don't", "e-mail", "x" * 120, "[MASK]", "[mask]", "[CLS]", "##ing",
             "batteryscreen", "3.14", "\t", "\n", "é", "naïve", "\u2019", "\u00a0", "日本"]
    texts = ["".join(rng.choice(characters) for _ in range(rng.randint(0, 60))) for _ in range(300)]
    texts += [" ".join(rng.choice(words) for _ in range(rng.randint(0, 30))) for _ in range(300)]
    texts += ["", "   ", "great phone", "the battery was very poor and the screen was junk after a week"]
    for max_length in (32, 6, 2):
        cache = WordPieceCache.for_tokenizer(tiny_tokenizer, max_length)
        assert cache is not None
        assert cache.encode(texts) == _encode_with(tiny_tokenizer, texts, max_length)
        tokens = encode(texts, np.zeros(len(texts)), tiny_tokenizer, max_length, batch_size=100)
        assert [tokens[i].tolist() for i in range(len(texts))] == _encode_with(tiny_tokenizer, texts, max_length)


def test_other_tokenizers_take_the_general_path():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from steps.data.tokens import WordPieceCache

    vocab = {"[UNK]": 0, "[PAD]": 1, "great": 2, "phone": 3}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    word_level = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]")
    assert WordPieceCache.for_tokenizer(word_level, 16) is None
    tokens = encode(["great phone", "phone"], [1, 0], word_level, 16)
    assert tokens[0].tolist() == [2, 3] and tokens[1].tolist() == [3]
