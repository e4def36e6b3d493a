"""Reading polyp frames and masks (shared by the Learner, the experiments and the server).

- ``images``: decode any frame to uint8 RGB under a pixel cap; resizes; normalisation;
- ``masks``: read a mask as its author meant it (refusing photographs); write labels losslessly;
- ``folders``: (image, mask) pairs in the Kvasir/CVC/datastore layouts, loaded resized (cached).

Every problem is a ``DataError`` that names the file.
"""

from polypal.data.folders import FrameSet, find_pairs, frames_subfolder, list_images, load_folder, load_frame
from polypal.data.images import (DEFAULT_MAX_PIXELS, TooLarge, normalize, read_rgb, resize_mask, resize_prob,
                                 resize_rgb, set_max_pixels)
from polypal.data.masks import MASK_THRESHOLD, MAX_AMBIGUOUS_FRACTION, mask_from_pixels, read_mask, write_label
from polypal.errors import DataError
from polypal.vocab import IMAGE_EXTENSIONS, LABEL_EXTENSIONS, VOLUME_EXTENSIONS, frame_id

__all__ = ["DEFAULT_MAX_PIXELS", "IMAGE_EXTENSIONS", "LABEL_EXTENSIONS", "MASK_THRESHOLD", "MAX_AMBIGUOUS_FRACTION",
           "VOLUME_EXTENSIONS", "DataError", "FrameSet", "TooLarge", "find_pairs", "frame_id", "frames_subfolder", "list_images",
           "load_folder", "load_frame", "mask_from_pixels", "normalize", "read_mask", "read_rgb", "resize_mask",
           "resize_prob", "resize_rgb", "set_max_pixels", "write_label"]
