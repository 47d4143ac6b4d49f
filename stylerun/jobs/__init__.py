"""Many runs: the worker that runs one job, executors (local or Ray), and batches.

A job has one name at each stage it passes through, bottom up:

* `engine.run.Job`: what the run engine runs (inputs, options, output); every front end makes one.
* `batch.JobSpec`: a job as the user wrote it (a JOBS file's line or row, or a cell of ``--grid``).
* `batch.PlannedJob`: a job of the batch after planning: its id, its output inside the batch
  folder, and its engine `Job`, or the reason it was refused.
* `worker.Task`: a job as a worker receives it (paths or `Shipped` bytes, checked options,
  a checkpoint to go on from); `worker.TaskResult` is how it ended.
* `worker.TaskFolder`: a task in its private work folder while it runs.

The server (`serve/`) hands its jobs to workers as `Task`s too.
"""
