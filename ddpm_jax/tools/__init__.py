"""Command-line tools around a run: weight converters (diffusers, pytorch-fid Inception), run
comparison and the TensorBoard scalar reader. Each `python -m ddpm_jax.tools.<name> --help`."""
