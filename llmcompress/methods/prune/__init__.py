"""Pruning (in progress): the global magnitude threshold is here; the recipe stages
(magnitude / Wanda / SparseGPT, N:M, structured) come next."""
