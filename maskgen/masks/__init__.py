"""maskgen.masks: landmarks, head pose, alignment and realistic synthetic masks.

```python
from maskgen.masks import MaskSpec, mask_face, load_image
img, reason = load_image("face.jpg")
res = mask_face(img, MaskSpec(type="kn95", wear="correct"), seed=0)
```
"""

from __future__ import annotations

from maskgen.masks.align import ARCFACE_5, align_face, alignment_matrix, five_points, transform_points
from maskgen.masks.api import FIT_POINTS, LOW_FIT, MaskResult, MaskSpec, fit_score, get_template, mask_face
from maskgen.masks.designs import DESIGNS, MASK_TYPES, VALVE_TYPES
from maskgen.masks.geometry import WEAR_MODES
from maskgen.masks.imageio import decode_image, load_image
from maskgen.masks.landmarks import (
    BACKENDS,
    DEFAULT_BACKEND,
    Face,
    FaceList,
    detect_faces,
    detect_faces_many,
    faces_from_landmarks,
    fan_weights_cached,
    get_detector,
    resolve_backend,
    select_faces,
)
from maskgen.masks.mix import RECIPES, MaskMix, default_mix
from maskgen.masks.packs import pack_names, read_pack
from maskgen.masks.pose import MEAN_SHAPE_3D, estimate_pose, flip_landmarks, mean_shape_2d
from maskgen.masks.textures import PALETTE, PATTERNS

__all__ = [
    "ARCFACE_5",
    "BACKENDS",
    "DEFAULT_BACKEND",
    "DESIGNS",
    "FIT_POINTS",
    "LOW_FIT",
    "MASK_TYPES",
    "MEAN_SHAPE_3D",
    "PALETTE",
    "PATTERNS",
    "RECIPES",
    "VALVE_TYPES",
    "WEAR_MODES",
    "Face",
    "FaceList",
    "MaskMix",
    "MaskResult",
    "MaskSpec",
    "align_face",
    "alignment_matrix",
    "decode_image",
    "default_mix",
    "detect_faces",
    "detect_faces_many",
    "estimate_pose",
    "faces_from_landmarks",
    "fan_weights_cached",
    "fit_score",
    "five_points",
    "flip_landmarks",
    "get_detector",
    "get_template",
    "load_image",
    "mask_face",
    "mean_shape_2d",
    "pack_names",
    "read_pack",
    "resolve_backend",
    "select_faces",
    "transform_points",
]
