"""Explanation quality: how faithful an attribution is to the model (issue 4).

curves (deletion / insertion and their random baselines) -> scores (infidelity and
max-sensitivity, by Captum's implementations) -> the sampler and the sanity checks (to come).
"""
