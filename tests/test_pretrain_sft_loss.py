"""The visual-slice loss equals plain full-vocabulary cross-entropy on the same targets."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from policies.heads import position_ids_from_mask
from policies.tiny import build_tiny_policy
from pretrain_sft.loss import next_token_nll_sums
from pretrain_sft.sequences import SequenceBuilder, collate_left_padded
from pretrain_sft.train import cpu_threads

CAPTIONS = ["a red square on the left", "two blue bars", "a green circle in the center of the picture"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared CPU the threads stall on each other."""
    with cpu_threads(1):
        yield


@pytest.fixture(scope="module")
def policy():
    torch.manual_seed(0)
    return build_tiny_policy(codebook_size=64, grid=(4, 4), hidden_size=64, num_hidden_layers=2, seed=1)


def _batch(policy, loss_on_text: bool):
    builder = SequenceBuilder(policy.tokenizer, policy.vocab, caption_mode="long", p_drop_cond=0.0, loss_on_text=loss_on_text)
    gen = torch.Generator().manual_seed(0)
    rows = [{"caption": c, "codes": torch.randint(0, 64, (16,), generator=gen).tolist()} for c in CAPTIONS]
    dropping = SequenceBuilder(policy.tokenizer, policy.vocab, p_drop_cond=1.0, loss_on_text=loss_on_text)
    items = [builder.build(r, random.Random(0)) for r in rows] + [dropping.build(rows[0], random.Random(0))]
    return collate_left_padded(items, policy.pad_id)


def _plain_sums(model, vocab, batch):
    """Reference: full logits from ``model(...).logits``, visual targets scored on columns ``[offset:]``."""
    mask = batch["attention_mask"]
    logits = model(input_ids=batch["input_ids"], attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
    logits, targets = logits[:, :-1].float(), batch["labels"][:, 1:]
    visual = targets >= vocab.offset
    text = (targets >= 0) & ~visual
    visual_sum = F.cross_entropy(logits[visual][:, vocab.offset :], targets[visual] - vocab.offset, reduction="sum")
    text_sum = F.cross_entropy(logits[text], targets[text], reduction="sum") if text.any() else logits.new_zeros(())
    return visual_sum, int(visual.sum()), text_sum, int(text.sum())


def _grads(model):
    grads = [p.grad.detach().clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return grads


@pytest.mark.parametrize("loss_on_text", [False, True])
def test_visual_slice_loss_and_gradients_equal_plain_full_vocabulary_cross_entropy(policy, loss_on_text):
    model, vocab = policy.model, policy.vocab
    model.train()
    model.zero_grad(set_to_none=True)
    batch = _batch(policy, loss_on_text)
    sums = next_token_nll_sums(model, vocab, batch["input_ids"], batch["attention_mask"], batch["labels"], chunk_size=5)
    sums.total.backward()
    ours = _grads(model)
    visual, n_visual, text, n_text = _plain_sums(model, vocab, batch)
    (visual + text).backward()
    plain = _grads(model)

    assert int(sums.visual_count) == n_visual == 4 * 16
    torch.testing.assert_close(sums.visual, visual, rtol=1e-5, atol=1e-5)
    if loss_on_text:
        assert int(sums.text_count) == n_text > 0
        torch.testing.assert_close(sums.text, text, rtol=1e-5, atol=1e-5)
    else:
        assert int(sums.text_count) == 0 and float(sums.text) == 0.0
    for a, b in zip(ours, plain):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_full_vocabulary_logits_are_computed_only_at_text_targets(policy, monkeypatch):
    from policies.heads import HeadWeights

    model, vocab = policy.model, policy.vocab
    rows_seen = []
    full_logits = HeadWeights.full_logits

    def counting(self, hidden):
        logits = full_logits(self, hidden)
        assert logits.shape[-1] == vocab.vocab_size
        rows_seen.append(logits.shape[:-1].numel())
        return logits

    monkeypatch.setattr(HeadWeights, "full_logits", counting)
    with torch.no_grad():
        for loss_on_text in (False, True):
            batch = _batch(policy, loss_on_text)
            sums = next_token_nll_sums(model, vocab, batch["input_ids"], batch["attention_mask"], batch["labels"])
            assert sum(rows_seen) == int(sums.text_count)
            assert (int(sums.text_count) > 0) == loss_on_text
            rows_seen.clear()
