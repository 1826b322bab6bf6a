"""Durable background work: a jobs table in the app's own database, and the workers that run it.

A service enqueues in its own transaction (`queue.enqueue`), so the job exists exactly when the
change that caused it was committed. Workers (inside the API process, or `talkstack-worker`)
claim due jobs with a lease and run the handler registered for the job's kind
(`registry.py`). Delivery is at least once: handlers must be idempotent.
"""
