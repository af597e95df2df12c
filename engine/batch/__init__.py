"""`python -m engine batch` (docs/remote.md, "Batch"): the jobs of a manifest run on this machine,
a Ray cluster or a server, each row's output folder under one folder, with a summary.

manifest (rows checked whole, each row's job folder and its input hash) -> run (the jobs through
the server's job store and Ray in this process, or over HTTP; outputs, retries, skips, summary).
"""
