"""ddpm-jax: Denoising Diffusion Probabilistic Models in JAX and Flax."""
