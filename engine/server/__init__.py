"""The remote engine (docs/remote.md): an HTTP server that takes job folders as zip archives and
runs them on a Ray cluster, with every job's state kept on disk.

archives (zip in and out, checked) -> admission (the engine's own job checks, models only)
-> store (the one owner of --jobs-dir) -> dispatch (Ray tasks) -> workers (on the cluster:
`python -m engine run`) ; app (FastAPI routes) and serve (the command) on top.
"""
