"""Streaming estimators: PCA, k-means and Gaussian mixtures over arrays larger than memory."""
