"""Logistic regression on detector features (the regressor of LID and Mahalanobis FE)."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn.linear_model import LogisticRegressionCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


class LogisticDetector:
    """Standardized features -> cross-validated L2 logistic regression (scikit-learn's
    ``LogisticRegressionCV``, as in Ma et al. and Lee et al.), in-distribution = label 1.
    ``score`` is the decision function: higher = more in-distribution."""

    def __init__(self, seed: int = 0) -> None:
        self.model = make_pipeline(
            StandardScaler(),
            LogisticRegressionCV(cv=3, max_iter=2000, scoring="neg_log_loss", random_state=seed),
        )

    def fit(self, in_features: torch.Tensor, out_features: torch.Tensor) -> LogisticDetector:
        """Fit on in-distribution rows (label 1) and challenging rows (label 0), balanced."""
        x = torch.cat([in_features, out_features]).double().numpy()
        y = np.r_[np.ones(len(in_features)), np.zeros(len(out_features))]
        weight = np.where(y == 1, 0.5 / len(in_features), 0.5 / len(out_features)) * len(y)
        with warnings.catch_warnings():  # scikit-learn's notices of changing defaults
            warnings.simplefilter("ignore", FutureWarning)
            self.model.fit(np.nan_to_num(x), y, logisticregressioncv__sample_weight=weight)
        return self

    def score(self, features: torch.Tensor) -> torch.Tensor:
        """In-distribution confidences ``(B,)``."""
        x = np.nan_to_num(features.double().numpy())
        return torch.from_numpy(self.model.decision_function(x))
