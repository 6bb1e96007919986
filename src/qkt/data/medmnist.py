"""The MedMNIST family from its official ``.npz`` files (``train_images``, ``train_labels``, …)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError
from .base import npz_archive

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


def decode(source: Path) -> dict[str, np.ndarray]:
    try:
        with npz_archive(source, "train_images, train_labels, test_images, test_labels") as f:
            arrays = {
                "x_train": f["train_images"],
                "y_train": f["train_labels"],
                "x_test": f["test_images"],
                "y_test": f["test_labels"],
            }
    except KeyError as exc:
        raise DataError(f"{source} lacks the array {exc}: a MedMNIST file holds train_images, train_labels, test_images, test_labels") from None
    if arrays["y_train"].ndim == 2 and arrays["y_train"].shape[1] > 1:
        raise DataError(f"{source} is multi-label ({arrays['y_train'].shape[1]} labels a sample); qkt needs one class per sample")
    return arrays
