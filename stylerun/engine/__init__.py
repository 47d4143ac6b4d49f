"""The run engine: the loss object, optimizers, checkpoints, estimates, the memory planner, and one transfer run."""
