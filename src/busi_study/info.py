"""Facts about the dataset and the source studies, kept as data in one place.

Nothing here is computed: these are published numbers and fixed conventions that the notebooks
set side by side with what the study measures.
"""

from __future__ import annotations

#: Class order everywhere (docs/protocol.md §1): indices 0, 1, 2.
CLASSES: tuple[str, ...] = ("normal", "benign", "malignant")
CLASS_INDEX: dict[str, int] = {name: i for i, name in enumerate(CLASSES)}

#: Column names of the class probabilities in every prediction table (``p_normal``, …).
PROBA_COLUMNS: list[str] = [f"p_{c}" for c in CLASSES]

#: The public release, as described by its paper and its files.
BUSI = {
    "name": "BUSI (Breast Ultrasound Images Dataset)",
    "citation": (
        "Al-Dhabyani W, Gomaa M, Khaled H, Fahmy A. Dataset of breast ultrasound images. "
        "Data in Brief 28 (2020) 104863. doi:10.1016/j.dib.2019.104863"
    ),
    "doi": "10.1016/j.dib.2019.104863",
    "kaggle_handle": "aryashah2k/breast-ultrasound-images-dataset",
    "folder_name": "Dataset_BUSI_with_GT",
    "expected_images": {"normal": 133, "benign": 437, "malignant": 210},
    "expected_image_total": 780,
    "expected_mask_total": 798,
    "women": "about 600",
}

#: Why two source studies quote about 1,578 images: they counted images and masks.
IMAGES_PLUS_MASKS = BUSI["expected_image_total"] + BUSI["expected_mask_total"]

#: S0's intensity analysis (normalised mean intensity per image), as published.
S0_INTENSITY = {
    "normal": {"min": 0.16, "max": 0.44, "median": 0.30},
    "benign": {"min": 0.16, "max": 0.51, "median": 0.33},
    "malignant": {"min": 0.14, "max": 0.47, "median": 0.28},
}

#: Class counts as quoted by the source studies (images + masks in S0).
S0_QUOTED_COUNTS = {"total": 1576, "normal": 265, "benign": 891, "malignant": 420}
S1_QUOTED_TOTAL = 1578

#: Source studies: short label, model, and headline claims (docs/sources.md).
SOURCE_STUDIES = {
    "S0": {"model": "MobileNetV2 (ImageNet), fine-tuned", "claims": {"accuracy": 0.82}},
    "S1": {"model": "ResNet101 (ImageNet), all layers trainable",
           "claims": {"val_accuracy": 0.99, "test_accuracy": 0.97}},
    "S2": {"model": "small CNN from scratch, 180x180",
           "claims": {"accuracy": 0.93, "precision": 0.96, "recall": 0.905}},
    "S3": {"model": "frozen ResNet50 + dense head",
           "claims": {"accuracy": 0.9402, "f1": 0.9452, "kappa": 0.8977, "roc_auc": 0.9870,
                      "val_accuracy": 0.9104}},
    "S4": {"model": "MobileNetV3Small + SSDLiteX-style head (binary)",
           "claims": {"accuracy": 0.96, "f1": 0.96}},
}

DEMO_BANNER = "DEMO DATA — NOT CLINICAL"

#: How each source claim maps onto our metrics (claim key → (our metric, note)).
CLAIM_TO_METRIC = {
    "accuracy": ("accuracy", ""),
    "test_accuracy": ("accuracy", ""),
    "val_accuracy": (None, "validation accuracy: not a test result, nothing to compare"),
    "f1": ("macro_f1", "macro F1 (S3 does not say which average)"),
    "kappa": ("kappa", ""),
    "roc_auc": ("macro_auc", "macro one-vs-rest AUC"),
    "precision": ("precision_malignant", "S2's binary precision; ours: malignant precision, 3 classes"),
    "recall": ("recall_malignant", "S2's binary recall; ours: malignant recall, 3 classes"),
}

#: The external test set (docs/protocol.md §9): testing only, never training, tuning or thresholds.
BREAST = {
    "name": "BrEaST-Lesions_USG",
    "citation": (
        "Pawłowska A, Ćwierz-Pieńkowska A, Domalik A, et al. Curated benchmark dataset for ultrasound based "
        "breast lesion analysis. Scientific Data 11, 148 (2024). doi:10.1038/s41597-024-02984-z; "
        "The Cancer Imaging Archive, collection BREAST-LESIONS-USG (15 Dec 2023), CC BY 4.0"
    ),
    "url": "https://www.cancerimagingarchive.net/collection/breast-lesions-usg/",
    "files": "BrEaST-Lesions_USG-images_and_masks-Dec-15-2023.zip and BrEaST-Lesions-USG-clinical-data-Dec-15-2023.xlsx",
    "expected_images": {"normal": 4, "benign": 154, "malignant": 98},
    "expected_tumour_masks": 252,
    "expected_other_masks": 14,
    "label_column": "Classification",
    "image_column": "Image_filename",
}

#: Closed sets of choices a profile may name (checked when a profile loads, :mod:`busi_study.params`).
#: The modules that implement them check that they implement exactly these (tests/test_params_typed.py).
CHOICES = {
    # backbones of the registry (models/registry.py)
    "backbone": ("mobilenet_v2", "resnet50", "resnet101", "mobilenet_v3_small", "efficientnet_b0"),
    # S1's enhancement options (data/enhance.py)
    "enhancement": ("none", "histeq", "clahe", "median", "bilateral", "nlmeans"),
    # lesion-aware candidates of notebook 05 (models/lesion_models.py)
    "lesion_candidate": ("attention", "two_stream", "two_stream_hires", "attention_ft"),
    # explanation maps (explain/gradcam.py)
    "gradcam_method": ("gradcam", "gradcam++"),
    # S4's training variants (models/lightweight.py)
    "s4_variant": ("faithful", "early_stopped"),
    # how an image becomes a square input (data/images.py)
    "fit": ("stretch", "pad"),
    # which of a model's exported forms the app, predict and notebook 08 use by default (studies/multitask_run.py)
    "deployed": ("final", "fold_ensemble"),
    # when the multi-task model's outline is shown (studies/multitask_run.py, predict.py): always, or only
    # when the model's own class prediction is not "normal"
    "outline_gate": ("none", "classifier"),
}
