"""polypal: task-aware active learning for endoscopic polyp segmentation.

The paper's three boxes, and what serves them:

- ``polypal.learner``: the Learner (U-Net, training recipe, one-pass inference, metrics);
- ``polypal.sampler``: the Sampler (BvSB scorers, k-center, Algorithm 1, the strategy registry);
- ``polypal.serving``: the live AL cycle behind the annotation server (the Oracle's side);
- ``polypal.experiments``: the offline protocol (``polypal-sim``) and its report;
- ``polypal.data`` (frames and masks), ``polypal.vocab`` (extensions and frame ids),
  ``polypal.video`` (colonoscopy video in), ``polypal.errors``.

Lower layers never import higher ones: data/vocab <- learner, sampler <- serving, experiments.
"""

__version__ = "0.1.0"
