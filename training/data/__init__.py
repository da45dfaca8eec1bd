"""Training data: downloading CelebA, preparing aligned chips, sampling pairs."""
