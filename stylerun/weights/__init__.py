"""VGG19's weights: the bundled network and the readers for each file format."""
