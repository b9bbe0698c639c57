"""Model-collapse simulator: recursive training on synthetic data."""
