import pytest
import torch

from llmcompress.methods.prune import threshold
from llmcompress.methods.prune.threshold import global_kth_magnitude, prune_masks


def brute(tensors, k):
    return torch.kthvalue(torch.cat([t.reshape(-1).abs().float() for t in tensors]), k).values.item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.9])
def test_threshold_equals_kthvalue(dtype, sparsity):
    g = torch.Generator().manual_seed(0)
    ts = [torch.randn(300, 200, generator=g).to(dtype) * s for s in (0.5, 1.0, 3.0)]
    total = sum(t.numel() for t in ts)
    k = int(round(sparsity * total))
    thr, below = global_kth_magnitude(ts, k, sample=4096)
    assert thr == brute(ts, k)
    masks = prune_masks(ts, sparsity)
    assert sum(int((~m).sum()) for m in masks) == k  # exact sparsity
    kept = torch.cat([t.reshape(-1).abs().float()[m.reshape(-1)] for t, m in zip(ts, masks)])
    pruned = torch.cat([t.reshape(-1).abs().float()[~m.reshape(-1)] for t, m in zip(ts, masks)])
    assert pruned.max() <= kept.min()


def test_ties_give_exact_sparsity():
    ts = [torch.tensor([[1.0, 1.0, 1.0, 2.0]]), torch.tensor([1.0, -1.0, 3.0, 0.5])]
    masks = prune_masks(ts, 0.5)  # 4 of 8: 0.5 and three of the five 1.0s
    assert sum(int((~m).sum()) for m in masks) == 4
    assert not masks[1][3] and masks[0][0, 3] and masks[1][2]


def test_unlucky_sample_is_corrected(monkeypatch):
    # A bracket that misses forces the widening path; the answer stays exact.
    ts = [torch.arange(1000, dtype=torch.float32).reshape(10, 100)]
    monkeypatch.setattr(threshold, "_sample", lambda tensors, m, gen: torch.full((m,), 999.0))
    assert global_kth_magnitude(ts, 10)[0] == 9.0
    monkeypatch.setattr(threshold, "_sample", lambda tensors, m, gen: torch.zeros(m))
    assert global_kth_magnitude(ts, 990)[0] == 989.0


def test_chunked_streaming(monkeypatch):
    monkeypatch.setattr(threshold, "CHUNK", 1000)
    g = torch.Generator().manual_seed(1)
    ts = [torch.randn(97, 131, generator=g), torch.randn(5000, generator=g)]
    k = 7000
    assert global_kth_magnitude(ts, k, sample=512)[0] == brute(ts, k)


def test_bad_sparsity():
    with pytest.raises(ValueError):
        prune_masks([torch.ones(4)], 1.0)
