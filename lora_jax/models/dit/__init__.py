"""Stable Audio's diffusion transformer: model, conditioning, v-objective, guidance, sampler."""
