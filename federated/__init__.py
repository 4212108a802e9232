"""Federated learning on bastion (reserved: datasets on workers, FedAvg, DP build here on the
public pointer API; nothing is exported yet)."""
