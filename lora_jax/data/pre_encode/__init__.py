"""Audio to Stable Audio latents and back: WAV files, clips, the Oobleck autoencoder."""
