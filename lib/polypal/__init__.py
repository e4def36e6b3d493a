"""polypal: task-aware active learning for endoscopic polyp segmentation."""

__version__ = "0.1.0"
