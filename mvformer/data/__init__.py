"""Video decoding, clip sampling, augmentation and datasets."""
