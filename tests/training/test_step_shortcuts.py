"""The training engine's exact shortcuts: the last layer for the first token only, the embedding gradient as rows."""
import pytest
import torch

from steps.training.config import TrainConfig
from steps.training.device import seed_everything
from steps.training.embedding_grads import RowGradients
from steps.training.first_token import first_token_only
from steps.training.loop import train_classifier
from steps.training.models import load_classifier


def model_without_dropout(model_dir, seed=0):
    seed_everything(seed)
    model = load_classifier(str(model_dir))
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0  # attention dropout too: DistilBERT reads its p from an nn.Dropout
    return model


def padded_batch():
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 40, (5, 11), generator=generator)
    ids[:, 0] = 2  # [CLS]
    mask = torch.ones_like(ids)
    mask[1, 6:], mask[3, 2:] = 0, 0  # two padded reviews
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask}


def loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    logits = model(**batch).logits
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 1, 0, 1]))
    loss.backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_first_token_only_gives_the_same_logits_and_gradients(tiny_model_dir, attention):
    model = model_without_dropout(tiny_model_dir)
    model.config._attn_implementation = attention
    batch = padded_batch()
    logits, grads = loss_and_grads(model, batch)
    last = model.distilbert.transformer.layer[-1]
    with first_token_only(model, batch) as why_not:
        assert why_not is None and "forward" in vars(last)  # patched
        got_logits, got_grads = loss_and_grads(model, batch)
    assert "forward" not in vars(last)  # and put back
    torch.testing.assert_close(got_logits, logits, rtol=1e-5, atol=1e-6)
    assert got_grads.keys() == grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(got_grads[name], grad, rtol=1e-4, atol=1e-6)


def test_first_token_only_leaves_other_models_alone(tiny_model_dir):
    from transformers import DistilBertForSequenceClassification

    class DistilBertForSequenceClassificationMeanPooled(DistilBertForSequenceClassification):
        """A head that reads every position: the shortcut would change its logits."""

        def forward(self, input_ids=None, attention_mask=None, **kwargs):
            hidden = self.distilbert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            return type("Output", (), {"logits": self.classifier(hidden.mean(dim=1))})

    DistilBertForSequenceClassificationMeanPooled.__name__ = "DistilBertForSequenceClassification"
    seed_everything(0)
    mean_pooled = DistilBertForSequenceClassificationMeanPooled.from_pretrained(str(tiny_model_dir), num_labels=2)
    with first_token_only(mean_pooled, padded_batch()) as why_not:
        assert why_not == "its logits differed from the full layer's in a self-check"
        assert "forward" not in vars(mean_pooled.distilbert.transformer.layer[-1])

    encoder_only = torch.nn.Sequential(torch.nn.Linear(2, 2))
    with first_token_only(encoder_only) as why_not:
        assert why_not == "Sequential is not a classifier known to read only the first token"


def test_row_gradients_give_the_same_clipped_update_as_dense_ones(tiny_model_dir):
    """Three AdamW steps with clipping that bites (max norm 0.01): row gradients move every weight as the dense
    embedding gradient does, rows of earlier steps included (their moments keep decaying)."""
    batches = [padded_batch()]
    batches.append({k: v[:, :7].clone() for k, v in batches[0].items()})
    batches[1]["input_ids"][:, 1:] = (batches[1]["input_ids"][:, 1:] + 3) % 40  # other token rows
    batches.append(batches[0])
    trained, norms = {}, {}
    for kind in ("dense", "rows"):
        model = model_without_dropout(tiny_model_dir)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01, fused=True)
        rows = RowGradients(model) if kind == "rows" else None
        norms[kind] = []
        for batch in batches:
            optimizer.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(**batch).logits, torch.tensor([0, 1, 1, 0, 1]))
            loss.backward()
            if rows:
                assert model.distilbert.embeddings.word_embeddings.weight.grad.is_sparse
                norms[kind].append(rows.clip(list(model.parameters()), 0.01))
            else:
                norms[kind].append(torch.nn.utils.clip_grad_norm_(model.parameters(), 0.01))
            optimizer.step()
        if rows:
            touched = set(batches[-1]["input_ids"].flatten().tolist())
            nonzero = set(torch.nonzero(rows.buffer.abs().sum(dim=1)).flatten().tolist())
            assert nonzero <= touched  # the second batch's other rows were reset
            rows.close()
            assert not model.distilbert.embeddings.word_embeddings.sparse
        trained[kind] = {k: v.clone() for k, v in model.state_dict().items()}
    torch.testing.assert_close(torch.stack(norms["rows"]), torch.stack(norms["dense"]), rtol=1e-5, atol=0)
    for key, value in trained["dense"].items():
        torch.testing.assert_close(trained["rows"][key], value, rtol=1e-4, atol=1e-6)  # as the accumulation test


def test_engine_says_which_shortcuts_it_took(tiny_model_dir, tiny_tokenizer):
    from steps.data.split import split_reviews
    from steps.training.tokenize import tokenize_split
    from tests.fixtures import review_frame

    tokens = tokenize_split(split_reviews(review_frame(120), seed=0).frames(), tiny_tokenizer, max_length=32)
    messages = []
    model = load_classifier(str(tiny_model_dir))
    train_classifier(model, tokens["train"], None, TrainConfig(epochs=1, batch_size=16, seed=0), log=messages.append)
    plan = next(m for m in messages if m.startswith("training on cpu"))
    assert "last layer: first token only" in plan and "word-embedding gradient: rows" in plan
    assert not model.distilbert.embeddings.word_embeddings.sparse  # the model is handed back as it came
    assert "forward" not in vars(model.distilbert.transformer.layer[-1])

    messages.clear()
    train_classifier(load_classifier(str(tiny_model_dir)), tokens["train"], None,
                     TrainConfig(epochs=1, batch_size=16, seed=0, freeze_encoder=True), log=messages.append)
    plan = next(m for m in messages if m.startswith("training on cpu"))
    assert "word-embedding gradient: dense (the input embedding is frozen)" in plan
