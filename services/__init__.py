"""Service layer: loads state from MongoDB, asks the ledger domain, writes results.

Imports pymongo but never Flask or Celery; the web and worker adapters call in here.
"""
