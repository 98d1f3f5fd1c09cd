"""Models: backbone registry, builders, image/feature caches, training and cross-validation."""
