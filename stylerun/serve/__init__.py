"""`stylerun serve`: a local HTTP API over the run engine (optional extra ``stylerun[serve]``).

`store` keeps jobs in SQLite under the data folder, `app` builds the FastAPI application
and runs one job at a time in a worker thread through `stylerun.engine.run`.
"""
