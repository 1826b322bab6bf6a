"""Durable background work: a jobs table in the app's own database, and the workers that run it.

A service enqueues in its own transaction (`queue.enqueue`), so the job exists exactly when the
change that caused it was committed. Workers (inside the API process, or `talkstack-worker`)
claim due jobs with a lease and run the handler registered for the job's kind (the registry,
app/tasks.py, and the worker's entry point, app/worker.py, live beside app/main.py: this
package is the queue and the worker only, and imports no domain package). Delivery is at least
once: handlers must be idempotent.
"""
