"""Federated intent models trained with Flower over the nodes' vaults.

Not built yet: it arrives with its own issue, after the coordinator.
"""
