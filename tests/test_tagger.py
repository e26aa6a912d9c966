"""BiRNN tagger: padding changes nothing, both heads train and decode valid sequences, char features both ways."""

import pytest
import torch

from nlprnn.data.tags import allowed_transition
from nlprnn.models.tagger import BiRNNTagger, BiRNNTaggerConfig, TransformerTagger, TransformerTaggerConfig

TAGS = ["O", "B-PER", "I-PER", "E-PER", "S-PER"]


def tiny(family="birnn", **overrides):
    torch.manual_seed(0)
    values = dict(vocab_size=12, char_vocab_size=9, tags=TAGS, tag_scheme="bioes", embedding_size=6,
                  char_embedding_size=4, char_hidden_size=5, dropout=0.0)
    if family == "transformer":
        values.update(d_model=8, n_heads=2, n_layers=2, d_ff=16, init_range=0.3)
        values.update(overrides)
        return TransformerTagger(TransformerTaggerConfig(**values)).eval()
    values.update(hidden_size=8)
    values.update(overrides)
    return BiRNNTagger(BiRNNTaggerConfig(**values)).eval()


def batch():
    words = torch.tensor([[3, 4, 5, 6], [7, 8, 0, 0]])
    chars = torch.randint(1, 9, (2, 4, 5), generator=torch.Generator().manual_seed(1))
    chars[:, :, 3:] = 0
    chars[1, 2:] = 0
    return words, chars, words != 0


@pytest.mark.parametrize("family", ["birnn", "transformer"])
@pytest.mark.parametrize("char_features", ["cnn", "lstm", "none"])
@pytest.mark.parametrize("head", ["crf", "softmax"])
def test_padding_changes_nothing_and_decoding_follows_the_scheme(family, char_features, head):
    model = tiny(family, char_features=char_features, head=head)
    words, chars, mask = batch()
    emissions = model(words, chars, mask)
    alone = model(words[1:, :2], chars[1:, :2], mask[1:, :2])
    torch.testing.assert_close(emissions[1:, :2], alone, rtol=1e-5, atol=1e-5)
    decoded = model.decode(emissions, mask)
    assert [len(d) for d in decoded] == [4, 2]
    if head == "crf":
        for path in decoded:
            names = ["<s>"] + [TAGS[i] for i in path] + ["</s>"]
            assert all(allowed_transition(a, b, "bioes") for a, b in zip(names, names[1:]))


@pytest.mark.parametrize("family", ["birnn", "transformer"])
@pytest.mark.parametrize("head", ["crf", "softmax"])
def test_a_tiny_tagger_learns_its_batch(family, head):
    model = tiny(family, head=head).train()
    words, chars, mask = batch()
    tags = torch.tensor([[1, 2, 3, 0], [4, 0, 0, 0]])
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(60):
        loss = model.loss(model(words, chars, mask), tags, mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    assert model.decode(model(words, chars, mask), mask) == [[1, 2, 3, 0], [4, 0]]
