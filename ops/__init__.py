"""Operator commands run by hand or from cron: ``python -m ops reconcile|verify-audit``.

An adapter like ``api/`` and ``tasks/``: it reads the configuration, opens the store
and calls the service layer, so the domain package ``ledger/`` imports no database code.
"""
