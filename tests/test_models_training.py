"""A BERT-base-width classifier trains on fastformer's kernels: its loss goes down.

Honest scope: under Triton's interpreter one training step of the full 12-layer bert_base
preset (batch 2, 4 tokens) took 190 s on the 2-core CPU machine, so this test keeps BERT-base's
width and everything else of the preset (768 wide, 12 heads, FFN 3072, post-LN, GELU, learned
positions, token types, the full 30522-token table, the pooler, dropout 0.1) but ONE layer:
about 20 s a step there. Three AdamW steps on a fixed batch (fixed seed) must lower the loss;
every step runs the kernels' forward and backward (attention, fused GEMMs, fused norms).
"""

from __future__ import annotations

import torch

from fastformer.models import Transformer, TransformerConfig

STEPS, LEARNING_RATE = 3, 1e-4
BATCH, SEQ = 2, 4


def test_bert_base_width_classifier_loss_goes_down():
    torch.manual_seed(0)
    config = TransformerConfig.from_preset("bert_base", n_layers=1)
    model = Transformer(config, task="sequence_classification", num_labels=2).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
    ids = torch.randint(1, config.vocab_size, (BATCH, SEQ))
    mask = torch.ones(BATCH, SEQ, dtype=torch.long)
    mask[1, -1] = 0
    labels = torch.tensor([0, 1])
    losses = []
    for _ in range(STEPS):
        optimizer.zero_grad()
        loss = model(ids, mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.8 * losses[0], losses
    # Every weight of the layer moved (its gradients reached it through the kernels).
    layer = model.encoder.layers[0]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())
