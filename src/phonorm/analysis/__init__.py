"""Analyses of a feature store (no models loaded, no torch): similarity (SVCCA, PWCCA, CKA from
streamed d×d sums), projections (PCA, UMAP), probes, normalization measures, claim checks, figures.
Entry point: `phonorm.analyze.analyze` (`analysis.run.analyze` with the torch kernels)."""
