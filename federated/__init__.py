"""Federated learning on bastion: datasets on workers, FedAvg and differential privacy, built
on the public pointer API. PATE analysis: :mod:`bastion.federated.pate`."""

from bastion.federated.pate import PateAnalysis, perform_analysis

__all__ = ["PateAnalysis", "perform_analysis"]
