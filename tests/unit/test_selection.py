"""The selection scripts' bookkeeping (scripts/select_gptaq_damp.py): how runs over several
calibration seeds are summed up, and which windows stay free of every seed's draw."""

import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from select_gptaq_damp import seed_summary, unused_windows  # noqa: E402


def _rows(text: str) -> dict[str, list[str]]:
    return {cells[2]: cells for line in text.splitlines()[2:] if (cells := [c.strip() for c in line.split("|")])}


def test_seed_summary_pairs_runs_by_seed():
    records = [dict(model="m", run="base", seed=s, wiki=w, code=c, seconds=1.0)
               for s, w, c in [(0, 10.0, 5.0), (1, 20.0, 6.0)]]
    records += [dict(model="m", run="new", seed=s, wiki=w, code=c, seconds=1.0)
                for s, w, c in [(0, 9.0, 5.5), (1, 21.0, 5.0)]]
    rows = _rows(seed_summary(records))
    assert rows["base"][6] == "+0.0000 / +0.0000" and rows["base"][7].startswith("0 / 0 of 2")
    new = rows["new"]
    assert float(new[4]) == round(math.sqrt(9.0 * 21.0), 3)  # geometric mean over seeds
    wiki = (math.log(9 / 10) + math.log(21 / 20)) / 2  # paired: seed 0 with seed 0, 1 with 1
    code = (math.log(5.5 / 5) + math.log(5 / 6)) / 2
    assert new[6] == f"{wiki:+.4f} / {code:+.4f}"
    assert new[7] == "1 / 1 of 2"


def test_unused_windows_avoid_every_seeds_draw(tokenizer):
    """Checked against the windows calibration_batches really draws, not a re-derivation of them."""
    from llmcompress.data import CalibrationConfig, calibration_batches, tokenize_source

    seq, n = 64, 40
    free = unused_windows(tokenizer, n, seq, count=4, seeds=(0, 1, 2))
    assert free.shape == (4, seq)
    ids = tokenize_source(tokenizer, CalibrationConfig(source="wiki_calib"))
    drawn = torch.cat([calibration_batches(tokenizer, CalibrationConfig(source="wiki_calib", num_samples=n,
                                                                          seq_len=seq, seed=seed))
                       for seed in (0, 1, 2)])
    spans = ids.unfold(0, seq, 1)  # every window start
    for w in free:
        start = next(s for s in range(len(ids) - seq, -1, -seq) if torch.equal(spans[s], w))
        near = spans[max(0, start - seq + 1) : start + seq]  # every window overlapping this one
        assert not (near.unsqueeze(0) == drawn.unsqueeze(1)).all(-1).any(), "a free window overlaps a drawn one"
