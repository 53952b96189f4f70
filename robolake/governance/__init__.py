"""Governance: the catalog and classification of every table, the audit log, GDPR erase."""
