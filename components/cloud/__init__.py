"""The one Google Cloud layer: clients, retries, operations, labels, endpoints, the lease and its recovery.

Deploy, canary, rollback and monitoring sit on top of it as siblings.
"""
