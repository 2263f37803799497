"""Stable Audio's Oobleck autoencoder: configs, layers, VAE bottleneck, model."""
