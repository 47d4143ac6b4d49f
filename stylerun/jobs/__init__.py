"""Many runs: the worker that runs one job, executors (local or Ray), and batches."""
