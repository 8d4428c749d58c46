"""Monitoring stage: Cloud Monitoring alert policies, notification channels and dashboard of an endpoint."""
