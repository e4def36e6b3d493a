"""The Learner: the U-Net, its training recipe, and one-pass inference (the paper's first box).

- ``model``: MONAI's UNet returning logits and the bottleneck latent; safe checkpoint loading;
- ``profiles``: named recipes (size, network, step budget, schedule, augmentation, EMA);
- ``train``: train on the labeled frames; ``augment``: endoscopy augmentation (MONAI transforms);
- ``predict``: probabilities, latents and any scorers' image scores in one pass;
- ``metrics``: the paper's pooled mIoU and per-image Dice/IoU (MONAI metrics).
"""

from polypal.learner.metrics import evaluate, per_image_scores
from polypal.learner.model import CheckpointError, PolypUNet, default_device, load_checkpoint, save_checkpoint
from polypal.learner.inference import PoolPrediction, labeled_fit, predict, predicts_no_polyp, validate
from polypal.learner.profiles import PROFILES, Profile, get_profile
from polypal.learner.training import TrainResult, hash_validation, labels_to_validate, seed_everything, train

__all__ = ["PROFILES", "CheckpointError", "PolypUNet", "PoolPrediction", "Profile", "TrainResult", "default_device",
           "evaluate", "get_profile", "hash_validation", "labeled_fit", "labels_to_validate", "load_checkpoint", "per_image_scores", "save_checkpoint", "predict", "predicts_no_polyp", "seed_everything", "train",
           "validate"]
