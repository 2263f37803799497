"""Pre-encoded latent clips for the diffusion transformer."""
