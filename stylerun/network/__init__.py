"""The ONNX network: graph builder, loss graphs, reverse-mode autodiff, export, model cache, sessions, tiling."""
