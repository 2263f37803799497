"""LoRAW data: WAV files to Stable Audio latents and back through the Oobleck autoencoder (clips,
encode, decode), and the pre-encoded latent clips the diffusion transformer trains on."""
