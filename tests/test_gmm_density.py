"""gmm_density_matching.py's actor loss really matches densities: the two-peaked toy of
benchmark/diagnostics/gmm_toy_density.py (a fixed critic with equal peaks at a = -0.6 and a = +0.6)."""

import pytest

from benchmark.diagnostics.gmm_toy_density import NEAR, PEAKS, fit_toy


@pytest.fixture(scope="module")
def fits():
    return {k: fit_toy(k) for k in (4, 1)}


def test_mixture_puts_mass_near_each_peak(fits):
    mass = fits[4]["mass_near_peaks"]
    assert min(mass) >= 0.30, f"K=4 mass within {NEAR} of {PEAKS}: {mass}"
    assert sum(mass) >= 0.85, "almost all of the mass belongs near the two peaks"


def test_single_gaussian_cannot(fits):
    mass = fits[1]["mass_near_peaks"]
    assert min(mass) < 0.30, f"K=1 mass within {NEAR} of {PEAKS}: {mass}"
