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
