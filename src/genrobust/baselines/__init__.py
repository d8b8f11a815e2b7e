"""Non-diffusion sources of generated data."""
