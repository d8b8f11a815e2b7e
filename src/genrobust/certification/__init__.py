"""Certified L2 robustness by randomized smoothing (Cohen et al. 2019): the bound and the `certify` stage."""
