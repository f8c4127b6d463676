"""Path points and weights for the integral of Eq. 1 (Eq. 2 is one such rule).

``quadrature_rule(method, n_steps)`` returns ``(weights, alphas)``: the integral of g over [0, 1] is
approximated by ``sum(w * g(a) for w, a in zip(weights, alphas))``.

- captum's rules: ``riemann_left``, ``riemann_right``, ``riemann_middle``, ``riemann_trapezoid`` and
  ``gausslegendre`` (the recommended default: far smaller completeness error for the same J). Note that
  captum's ``riemann_trapezoid`` is not the textbook rule: its points are spaced 1/(J-1) apart but weighted
  1/J (halved at the ends), so the weights sum to (J-1)/J and the completeness error is about 1/J
  (measured by ``make bench``: 2.0% at J = 50).
- ``official``: the rule of the authors' public code, J evenly spaced alphas from 0 to 1 *inclusive*,
  each weighted 1/J. It is neither a left, right nor trapezoid Riemann sum: the weights sum to 1 but
  both end points carry a full 1/J, so the estimate is biased by (g(0) + g(1)) / (2J). Eq. 2 of the
  paper (j/J for j = 1..J) is ``riemann_right``.
"""

from __future__ import annotations

from captum.attr._utils.approximation_methods import SUPPORTED_METHODS, approximation_parameters

OFFICIAL_METHOD = "official"
METHODS: tuple[str, ...] = tuple(SUPPORTED_METHODS) + (OFFICIAL_METHOD,)


def quadrature_rule(method: str, n_steps: int) -> tuple[list[float], list[float]]:
    """Weights and alphas of ``method`` with ``n_steps`` path points (see module docstring)."""
    if not isinstance(n_steps, int) or isinstance(n_steps, bool):
        raise TypeError(f"n_steps must be an int, got {type(n_steps).__name__}")
    if n_steps < 2:
        raise ValueError(f"n_steps must be at least 2, got {n_steps}")
    if method == OFFICIAL_METHOD:
        alphas = [j / (n_steps - 1) for j in range(n_steps)]
        return [1.0 / n_steps] * n_steps, alphas
    if method not in SUPPORTED_METHODS:
        raise ValueError(f"unknown IG method {method!r}; choose one of {', '.join(METHODS)}")
    step_sizes, alphas = approximation_parameters(method)
    return list(step_sizes(n_steps)), list(alphas(n_steps))
