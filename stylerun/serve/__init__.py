"""`stylerun serve`: a local HTTP API and page over the run engine (optional extra ``stylerun[serve]``).

`store` keeps jobs in SQLite under the data folder; `app` builds the FastAPI application
(the job API, each job's event stream and pictures, and the page in `static/`); `runner`
runs the queued jobs, `workers` of them at a time, in threads of this process or on Ray
actors, each checkpointed under the data folder so that a restarted server goes on.
"""
