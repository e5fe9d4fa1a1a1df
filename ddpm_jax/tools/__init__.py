"""Command-line tools around a run: weight converters (diffusers, pytorch-fid Inception), run
comparison, data preparation, FID of any samples and the TensorBoard scalar reader. Each
`python -m ddpm_jax.tools.<name> --help`, or the installed `ddpm-jax-<name>` command (pyproject.toml);
their shared command line (flags, --config, one-line errors, exit status): common.py."""
