"""The MedMNIST family from its official ``.npz`` files (``train_images``, ``train_labels``, …).

MedMNIST+ ships each 2D data set at 28, 64, 128 and 224 pixels, as ``<name>.npz`` and
``<name>_<size>.npz``. Loading needs only the file; downloading asks the ``medmnist``
package (``pip install 'qkt[medmnist]'``) for each file's address and MD5, and files
that package downloaded (into ``~/.medmnist``) are found without a data root.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError
from .base import read_npz

# Label names from the MedMNIST v2 metadata, in label order.
CLASSES: dict[str, tuple[str, ...]] = {
    "bloodmnist": ("basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet"),
    "pathmnist": ("adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle",
                  "normal colon mucosa", "cancer-associated stroma", "colorectal adenocarcinoma epithelium"),
    "dermamnist": ("actinic keratoses", "basal cell carcinoma", "benign keratosis", "dermatofibroma",
                   "melanoma", "melanocytic nevi", "vascular lesions"),
    "organamnist": ("bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right", "liver",
                    "lung-left", "lung-right", "pancreas", "spleen"),
    "organcmnist": ("bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right", "liver",
                    "lung-left", "lung-right", "pancreas", "spleen"),
    "organsmnist": ("bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right", "liver",
                    "lung-left", "lung-right", "pancreas", "spleen"),
    "octmnist": ("choroidal neovascularization", "diabetic macular edema", "drusen", "normal"),
    "pneumoniamnist": ("normal", "pneumonia"),
    "breastmnist": ("malignant", "normal, benign"),
    "tissuemnist": ("collecting duct, connecting tubule", "distal convoluted tubule", "glomerular endothelial cells",
                    "interstitial endothelial cells", "leukocytes", "podocytes", "proximal tubule segments",
                    "thick ascending limb"),
}


OFFICIAL_KEYS = {"x_train": "train_images", "y_train": "train_labels", "x_test": "test_images", "y_test": "test_labels"}
"""qkt's array names and the official file's; its validation split (``val_*``) is not used."""

SIZES = (28, 64, 128, 224)
PACKAGE_ROOT = Path.home() / ".medmnist"
"""Where the medmnist package keeps the files it downloads (its ``DEFAULT_ROOT``)."""


def file_names(name: str, size: int | None) -> tuple[str, ...]:
    """The official file names of MedMNIST data set ``name`` at ``size`` pixels (default 28)."""
    if size is not None and size not in SIZES:
        raise DataError(f"{name}: MedMNIST ships {', '.join(map(str, SIZES))}-pixel images, not {size}")
    if size in (None, 28):
        return (f"{name}.npz", f"{name}_28.npz") + (("bloodcell-28.npz",) if name == "bloodmnist" else ())
    return (f"{name}_{size}.npz",)


def official_file(name: str, size: int | None) -> tuple[str, str]:
    """The download address and MD5 of ``name`` at ``size`` pixels, as the medmnist package lists them."""
    file_names(name, size)
    try:
        from medmnist.info import INFO
    except ImportError as exc:
        raise DataError(f"{name}: downloading MedMNIST needs the medmnist package, which lists each file's address and "
                        f"checksum (pip install 'qkt[medmnist]'; {exc}); or get {file_names(name, size)[0]} from "
                        "https://medmnist.com yourself") from None
    suffix = "" if size in (None, 28) else f"_{size}"
    info = INFO.get(name, {})
    if f"url{suffix}" not in info or f"MD5{suffix}" not in info:
        raise DataError(f"{name}: the installed medmnist package lists no {file_names(name, size)[0]}")
    return info[f"url{suffix}"], info[f"MD5{suffix}"]


def decode(source: Path) -> dict[str, np.ndarray]:
    official = read_npz(source, tuple(OFFICIAL_KEYS.values()), "a MedMNIST file")
    arrays = {ours: official[theirs] for ours, theirs in OFFICIAL_KEYS.items()}
    if arrays["y_train"].ndim == 2 and arrays["y_train"].shape[1] > 1:
        raise DataError(f"{source} is multi-label ({arrays['y_train'].shape[1]} labels a sample); qkt needs one class per sample")
    return arrays
