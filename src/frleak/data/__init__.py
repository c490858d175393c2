"""Face data: identity-folder datasets, preprocessing without torchvision, membership splits, verification pairs."""
