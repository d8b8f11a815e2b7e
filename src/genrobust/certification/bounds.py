"""Cohen et al.'s certificate: a one-sided Clopper-Pearson bound on pA and the radius it proves.

The smoothed classifier g(x) = argmax_c P(f(x + N(0, sigma^2 I)) = c) keeps its class within
L2 radius sigma * PhiInv(pA) of x whenever pA, the top class's probability, exceeds 1/2
(Theorem 1 with pB = 1 - pA). pA is only estimated, so CERTIFY uses a lower bound that holds
with probability 1 - alpha, and abstains where that bound does not exceed 1/2.
"""

from __future__ import annotations

from scipy.stats import beta, norm


def lower_confidence_bound(successes: int, trials: int, alpha: float) -> float:
    """The (1 - alpha) one-sided Clopper-Pearson lower bound on a binomial proportion.

    It equals statsmodels' proportion_confint(successes, trials, alpha=2 * alpha, method="beta")[0],
    which Cohen et al.'s code calls: the alpha/2 quantile of Beta(k, n - k + 1) at level 2 alpha.
    """
    if not 0 <= successes <= trials or trials < 1:
        raise ValueError(f"expected 0 <= successes <= trials and trials >= 1, got {successes} of {trials}")
    if successes == 0:
        return 0.0
    return float(beta.ppf(alpha, successes, trials - successes + 1))


def certified_radius(p_lower: float, sigma: float) -> float | None:
    """sigma * PhiInv(p_lower), or None (abstain) where the bound does not exceed 1/2 (Cohen et al.: pA < 0.5)."""
    if p_lower < 0.5:
        return None
    return float(sigma * norm.ppf(p_lower))
