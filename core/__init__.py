"""bastion"""
