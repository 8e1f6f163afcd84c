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
    thr, below, _ = global_kth_magnitude(ts, k, sample=4096)
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
    monkeypatch.setattr(threshold, "_sample", lambda tensors, m, gen, scales=None: torch.full((m,), 999.0))
    assert global_kth_magnitude(ts, 10)[0] == 9.0
    monkeypatch.setattr(threshold, "_sample", lambda tensors, m, gen, scales=None: torch.zeros(m))
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


def test_scaled_scores_and_in_place():
    from llmcompress.methods.prune.threshold import prune_in_place

    g = torch.Generator().manual_seed(2)
    ts = [torch.randn(64, 64, generator=g) * 0.01, torch.randn(64, 64, generator=g) * 10]
    scales = [0.01, 10.0]
    k = 4096
    expected = brute([ts[0] / 0.01, ts[1] / 10.0], k)
    assert global_kth_magnitude(ts, k, sample=256, scales=scales)[0] == pytest.approx(expected, rel=1e-6)
    masks = prune_masks(ts, 0.5, scales)
    copies = [t.clone() for t in ts]
    counts = prune_in_place(copies, 0.5, scales)
    assert sum(counts) == 4096
    for c, m in zip(copies, masks):
        assert torch.equal(c != 0, m)
    # both layers lose about half: scores are comparable across scales
    assert 0.3 < counts[0] / 4096 < 0.7


@pytest.mark.parametrize("chunk", [None, 1000])
def test_prune_replacing_equals_in_place(monkeypatch, chunk):
    """The CPU path writes new tensors (no copy-on-write of memory-mapped weights): same zeros,
    sources untouched, every tensor handed to ``replace`` once, also across chunk boundaries."""
    from llmcompress.methods.prune import threshold as T

    if chunk:
        monkeypatch.setattr(T, "CHUNK", chunk)
    g = torch.Generator().manual_seed(3)
    ts = [torch.randn(40, 64, generator=g), torch.randn(3000, generator=g), torch.ones(500)]  # ties in the last
    sources = [t.clone() for t in ts]
    in_place = [t.clone() for t in ts]
    T.prune_in_place(in_place, 0.6)
    got = {}
    work = list(ts)
    T.prune_replacing(work, 0.6, replace=lambda i, new: got.setdefault(i, new))
    assert sorted(got) == [0, 1, 2]
    for i in range(3):
        assert torch.equal(got[i], in_place[i]) and work[i] is got[i]
        assert torch.equal(ts[i], sources[i])  # the inputs were only read


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.62])
def test_fused_cut_with_many_ties_equals_masks(dtype, sparsity):
    """Weights with few distinct magnitudes (bf16 checkpoints): thousands of ties at the threshold.
    The fused whole-tensor cuts (all ties pruned / none pruned) and the one boundary tensor must
    give the masks' selection: exact count, ties pruned in tensor order."""
    from llmcompress.methods.prune.threshold import prune_in_place, prune_replacing

    g = torch.Generator().manual_seed(4)
    ts = [(torch.randint(-8, 9, (n, 64), generator=g).float() / 8).to(dtype) for n in (30, 50, 40, 20)]
    total = sum(t.numel() for t in ts)
    k = int(round(sparsity * total))
    thr, below, equal = global_kth_magnitude(ts, k)
    assert below < k < below + equal  # the threshold value is shared by several tensors' weights
    masks = prune_masks(ts, sparsity)
    in_place = [t.clone() for t in ts]
    counts = prune_in_place(in_place, sparsity)
    replaced = [t.clone() for t in ts]
    prune_replacing(replaced, sparsity)
    assert sum(counts) == k
    for t, m, a, b, n in zip(ts, masks, in_place, replaced, counts):
        assert torch.equal(a, t * m) and torch.equal(b, t * m)
        assert n == int((~m).sum())
