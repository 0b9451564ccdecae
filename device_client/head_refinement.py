"""Closed-form refinement of the cloud's Θ on the device's own window (no labels, no backprop).

The HyperNetwork reads a device's shift from one encrypted description (the window mean)
and cannot know where each class's cluster moved on a camera unlike those it was trained
on. The device can estimate that from its recent window without labels, forward-only:

1. **E-step**: soft class memberships r = softmax(logits) of the window's clips, first
   under the cloud's Θ, then under the refined head;
2. **M-step**: class priors π_k, class means μ_k and the pooled within-class covariance S
   of the window, weighted by r; S is shrunk towards a multiple of the identity,
   S + λ·mean(diag S)·I (λ = ``shrinkage``), so a window of a few dozen clips in 128
   dimensions still gives a well-conditioned precision P = S⁻¹;
3. the linear discriminant of those Gaussians (LDA): kernel_k = P·μ_k,
   bias_k = −½·μ_kᵀPμ_k + log π_k. Repeat ``iterations`` times.

This is EM for a Gaussian mixture with shared covariance (Dempster, Laird & Rubin 1977),
started from the cloud's head so cluster k stays class k. Cost: a [W, D] × [D, C] product,
C weighted means, one [D, D] covariance and one D × D inverse per iteration, once per
refresh (milliseconds for W = 128, D = 128; measured in BENCHMARKS.md).

The refined head scores OOD as well as classifying: its logits are the class-conditional
Gaussian log-likelihoods relative to one Gaussian fitted to the whole window
(mean m₀, shrunk precision P₀), plus β times the cloud head's logits (K_Θ, b_Θ):

    logit_k(z) = zᵀP μ_k − ½ μ_kᵀP μ_k + log π_k − ½ zᵀP z + ½ (z − m₀)ᵀP₀(z − m₀)
                 + β·(z·K_Θ + b_Θ)_k

The two quadratic terms are the same for every class, so they leave the argmax and the
softmax (MSP) alone, while the Energy ``logsumexp_k logit_k`` becomes the log-likelihood
ratio of "one of the camera's classes" against "the camera's stream as a whole": the
relative Mahalanobis distance of Ren et al. 2021 ("A Simple Fix to Mahalanobis Distance
for Improving Near-OOD Detection"), in soft-min form. A clip far from every class cluster
of *this* camera gets a low Energy, so the device's Energy verdicts use it unchanged.

The β term keeps the cloud's head in the vote: β·(cloud logits) multiplies the window's
class posteriors by the cloud head's posteriors to the power β (a product of experts). A
window of about a hundred clips estimates 6 means and a 128-dimensional covariance; on
cameras like those H was trained on, H's head is already close to fine-tuning and the
estimate only adds noise; on unfamiliar cameras the window's statistics carry what H
cannot know.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from shared.familiarity import FAMILIAR_RATIO, FamiliarityReference
from shared.hypernet import split_theta
from shared.ood.energy import energy

#: EM iterations and covariance shrinkage λ the device uses: chosen on validation families
#: only (``bench/personalization.py``, ``choose_refinement``); accuracy was flat for
#: λ ∈ [0.3, 3] and 2–10 iterations there
ITERATIONS = 5
SHRINKAGE = 3.0
#: β, the weight of the cloud head's logits in the refined head; chosen on validation
#: devices of seen shifts and of the validation families (docs/personalization.md)
CLOUD_WEIGHT = 3.0
#: whether every E-step keeps the cloud head in the vote (see :class:`RefinementSettings`)
ANCHORED = False
#: fewest window clips a refinement is computed from (fewer: the cloud's Θ is used as is)
MIN_WINDOW = 32
#: folds of :func:`cross_fitted_energy`: 2 gave the same share of validation devices meeting
#: the newcomer targets at windows of 64, 96 and 128 clips; 4 and 8 flagged too much ID
#: (``bench/personal_threshold.py``, docs/personalization.md)
CROSS_FIT_FOLDS = 2
#: a refined head's threshold offset: the quantile ``OFFSET_QUANTILE`` of its own
#: (in-sample) window Energy, not of cross-fitted scores — the run-path rule of
#: ``bench/personal_threshold.py`` adopted in-sample at 0.7 over cross-fitted at 0.6 (+6 −0
#: paired validation runs, p = 0.03); the higher quantile absorbs the in-sample optimism
CROSS_FITTED_OFFSET = False
OFFSET_QUANTILE = 0.7


@dataclass(frozen=True)
class RefinementSettings:
    """How the device refines the cloud's Θ (validated)."""

    iterations: int = ITERATIONS
    shrinkage: float = SHRINKAGE
    min_window: int = MIN_WINDOW
    cloud_weight: float = CLOUD_WEIGHT
    #: E-steps after the first use the refined head's own posterior, LDA + β·Θ (EM for the
    #: product of experts), instead of the window-only LDA
    anchored: bool = ANCHORED
    #: the offset's window scores come from heads refined without the clip scored
    cross_fitted_offset: bool = CROSS_FITTED_OFFSET
    #: the quantile of those scores the offset matches to the reference's (Θ as sent keeps
    #: the Personalizer's ``threshold_quantile``)
    offset_quantile: float = OFFSET_QUANTILE

    def __post_init__(self) -> None:
        if isinstance(self.iterations, bool) or not 1 <= int(self.iterations) <= 100:
            raise ValueError(f"iterations must be in [1, 100], got {self.iterations!r}")
        if not (np.isfinite(self.shrinkage) and self.shrinkage > 0):
            raise ValueError(f"shrinkage must be a positive number, got {self.shrinkage!r}")
        if self.min_window < 2:
            raise ValueError(f"min_window must be >= 2, got {self.min_window}")
        if not (np.isfinite(self.cloud_weight) and self.cloud_weight >= 0):
            raise ValueError(f"cloud_weight must be a number >= 0, got {self.cloud_weight!r}")
        if not 0.0 < self.offset_quantile < 1.0:
            raise ValueError(f"offset_quantile must be in (0, 1), got {self.offset_quantile!r}")


@dataclass(frozen=True)
class GaussianHead:
    """The refined head: LDA logits, the class-common likelihood-ratio term and β times
    the cloud head's logits."""

    kernel: np.ndarray  # [D, C]
    bias: np.ndarray  # [C]
    precision: np.ndarray  # P [D, D], shared by the classes
    background_mean: np.ndarray  # m₀ [D], the window's mean
    background_precision: np.ndarray  # P₀ [D, D], the window's (shrunk) precision
    cloud_kernel: np.ndarray  # K_Θ [D, C], the cloud's head
    cloud_bias: np.ndarray  # b_Θ [C]
    cloud_weight: float  # β
    #: the cloud's Θ decides the class while the refined head scores (a camera like those
    #: H was trained on: shared.familiarity); argmax and softmax are Θ's, Energy is ours
    classify_with_cloud: bool = False

    @property
    def embed_dim(self) -> int:
        return int(self.kernel.shape[0])

    def logits(self, z: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Logits [N, C] (float64) for embeddings z [N, D]."""
        z = torch.as_tensor(np.asarray(z, dtype=np.float64))
        if z.ndim != 2 or z.shape[1] != self.embed_dim:
            raise ValueError(f"z must be [N, {self.embed_dim}], got {list(z.shape)}")
        kernel = torch.from_numpy(self.kernel + self.cloud_weight * self.cloud_kernel)
        bias = torch.from_numpy(self.bias + self.cloud_weight * self.cloud_bias)
        centred = z - torch.from_numpy(self.background_mean)
        common = -0.5 * _quadratic(z, torch.from_numpy(self.precision)) + 0.5 * _quadratic(
            centred, torch.from_numpy(self.background_precision)
        )
        logits = z @ kernel + bias + common[:, None]
        if not self.classify_with_cloud:
            return logits
        # Θ's log-posteriors shifted by the refined head's logsumexp: Θ's argmax and
        # softmax, the refined head's Energy
        cloud = z @ torch.from_numpy(self.cloud_kernel) + torch.from_numpy(self.cloud_bias)
        return torch.log_softmax(cloud, 1) + torch.logsumexp(logits, 1, keepdim=True)


def _quadratic(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """xᵀ M x for every row of x."""
    return ((x @ matrix) * x).sum(1)


def shrunk_precision(covariance: np.ndarray, shrinkage: float) -> np.ndarray:
    """(S + λ·mean(diag S)·I)⁻¹: well-conditioned however few clips S came from."""
    d = covariance.shape[0]
    ridge = shrinkage * max(float(np.trace(covariance)) / d, 1e-12)
    return np.linalg.inv(covariance + ridge * np.eye(d))


def refine_head(
    window: np.ndarray,
    theta: np.ndarray,
    num_classes: int,
    settings: RefinementSettings | None = None,
) -> GaussianHead:
    """EM from the cloud's Θ [D·C + C] on the window [W, D] (see the module docstring)."""
    settings = settings or RefinementSettings()
    window = np.asarray(window, dtype=np.float64)
    theta = np.asarray(theta, dtype=np.float64)
    if window.ndim != 2:
        raise ValueError(f"window must be [W, D], got shape {list(window.shape)}")
    if len(window) < settings.min_window:
        raise ValueError(
            f"refinement needs at least {settings.min_window} window clips, got {len(window)}"
        )
    if not (np.isfinite(window).all() and np.isfinite(theta).all()):
        raise ValueError("window and theta must be finite (no NaN or inf)")
    kernel_t, bias_t = split_theta(torch.from_numpy(theta), window.shape[1], num_classes)
    kernel, bias = cloud_kernel, cloud_bias = kernel_t.numpy(), bias_t.numpy()
    precision = np.eye(window.shape[1])
    # anchored E-steps add β·(cloud logits), which do not change between iterations
    anchor = (
        settings.cloud_weight * (window @ cloud_kernel + cloud_bias) if settings.anchored else 0.0
    )
    for iteration in range(settings.iterations):
        logits = window @ kernel + bias
        if iteration > 0:
            logits = logits + anchor
        logits -= logits.max(1, keepdims=True)
        membership = np.exp(logits)
        membership /= membership.sum(1, keepdims=True)  # E-step: r [W, C]
        counts = membership.sum(0) + 1e-9
        means = (membership.T @ window) / counts[:, None]  # μ [C, D]
        scatter = np.zeros((window.shape[1], window.shape[1]))
        for k in range(num_classes):
            centred = window - means[k]
            scatter += (centred * membership[:, k : k + 1]).T @ centred
        precision = shrunk_precision(scatter / len(window), settings.shrinkage)
        kernel = precision @ means.T  # [D, C]
        bias = -0.5 * np.einsum("dc,cd->c", kernel, means) + np.log(counts / counts.sum())
    background_mean = window.mean(0)
    centred = window - background_mean
    background = shrunk_precision(centred.T @ centred / len(window), settings.shrinkage)
    return GaussianHead(
        kernel,
        bias,
        precision,
        background_mean,
        background,
        cloud_kernel,
        cloud_bias,
        float(settings.cloud_weight),
    )


def familiarity_gate(
    head: GaussianHead,
    window: np.ndarray,
    familiarity: FamiliarityReference | None,
    threshold: float | None = FAMILIAR_RATIO,
) -> tuple[GaussianHead, float | None]:
    """(head, ratio): on a camera familiar to H (the window mean's ratio at most
    ``threshold``, :mod:`shared.familiarity`) Θ classifies and the refined head scores.
    Without a reference or a threshold the refined head classifies; ratio None."""
    if familiarity is None or threshold is None:
        return head, None
    ratio = familiarity.ratio(np.asarray(window, dtype=np.float64).mean(0))
    return replace(head, classify_with_cloud=ratio <= threshold), ratio


def offset_scores(
    window: np.ndarray,
    theta: np.ndarray,
    num_classes: int,
    settings: RefinementSettings,
    head: GaussianHead,
) -> np.ndarray:
    """The window's Energy [W] a refined head's threshold offset is read from: the head's
    own scores of its window (the default) or cross-fitted ones (:func:`cross_fitted_energy`)."""
    if settings.cross_fitted_offset:
        return cross_fitted_energy(window, theta, num_classes, settings)
    return energy(head.logits(window)).numpy()


def cross_fitted_energy(
    window: np.ndarray,
    theta: np.ndarray,
    num_classes: int,
    settings: RefinementSettings | None = None,
    folds: int = CROSS_FIT_FOLDS,
) -> np.ndarray:
    """Energy of every window clip under a head refined *without* it ([W], −logsumexp).

    The refined head fits its window, so the window's own scores are optimistic and a
    threshold read off them flags too much of the stream; clip i is scored by the head
    refined on the folds it is not in (clips dealt round-robin into ``folds`` folds).
    """
    settings = settings or RefinementSettings()
    window = np.asarray(window, dtype=np.float64)
    if folds < 2 or len(window) < 2 * folds:
        raise ValueError(f"cross-fitting needs folds >= 2 and 2 clips per fold, got {folds}")
    fold = np.arange(len(window)) % folds
    loose = replace(settings, min_window=2)  # each fit sees (folds − 1)/folds of the window
    scores = np.empty(len(window))
    for k in range(folds):
        head = refine_head(window[fold != k], theta, num_classes, loose)
        scores[fold == k] = energy(head.logits(window[fold == k])).numpy()
    return scores
