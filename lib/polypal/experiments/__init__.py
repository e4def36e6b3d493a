"""Experiments: the paper's offline protocol (``polypal-sim``) and its report.

- ``splits``: the datasets' splits (Kvasir sessile test set out of the pool, CVC by sequence);
- ``simulate``: the AL loop with a simulated oracle, one JSON line per finished stage (resumable);
- ``ceiling``: the full-pool ceiling; ``videos``: which video each frame came from (--video-cap, splits);
- ``cli``: ``polypal-sim run|ceiling|report``; ``report``: tables, curves, paired CIs, label savings.

The same strategies as the live server (``polypal.sampler.REGISTRY``).
"""
