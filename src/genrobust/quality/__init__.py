"""Quality of generated images: Fréchet distances between Inception feature statistics (FID)."""
