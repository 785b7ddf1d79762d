"""Cohort work: many registrations on a distributed engine (Dask), resumable through a manifest, with a report;
group-wise template construction on top of it. ``deepreg batch`` and ``deepreg template`` are the commands."""

from __future__ import annotations

from .._lazy import lazy_attributes

_LAZY = {
    "pairs": ["PairSpec", "read_pairs", "all_to_one"],
    "manifest": ["Manifest"],
    "engine": ["run_batch", "local_cluster_spec", "ClusterSpec", "BatchSummary", "open_client", "close_client"],
    "template": ["build_template"],
}
__getattr__, __dir__, __all__ = lazy_attributes(__name__, globals(), _LAZY)
