"""OOD detectors and metrics. Convention: a detector's score is higher for more OOD inputs.

Typical use::

    detector = make_detector("energy").fit(train_evidence, train_labels, head)
    threshold = calibrate_threshold(detector.score(id_val_evidence))   # 95 % ID accepted
    is_ood = detector.score(evidence) > threshold
"""

from shared.ood.ash import ASH, ash_s
from shared.ood.base import Detector, Evidence, LinearHead
from shared.ood.energy import Energy, energy
from shared.ood.gen import GEN
from shared.ood.knn import KNN
from shared.ood.mahalanobis import Mahalanobis
from shared.ood.maxlogit import MaxLogit
from shared.ood.metrics import accuracy, calibrate_threshold, ood_metrics, roc_points
from shared.ood.msp import MSP
from shared.ood.react import ReAct
from shared.ood.registry import DETECTORS, make_detector
from shared.ood.shaping import FeatureShapingDetector
from shared.ood.temp_scaling import TempScaling, fit_temperature
from shared.ood.vim import ViM, default_principal_dim

__all__ = [
    "ASH",
    "DETECTORS",
    "Detector",
    "Energy",
    "Evidence",
    "FeatureShapingDetector",
    "GEN",
    "KNN",
    "LinearHead",
    "MSP",
    "Mahalanobis",
    "MaxLogit",
    "ReAct",
    "TempScaling",
    "ViM",
    "accuracy",
    "ash_s",
    "calibrate_threshold",
    "default_principal_dim",
    "energy",
    "fit_temperature",
    "make_detector",
    "ood_metrics",
    "roc_points",
]
