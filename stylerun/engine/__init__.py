"""The run engine: the loss object, optimizers, checkpoints, estimates, and one transfer run."""
