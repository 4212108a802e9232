"""``python -m bastion``."""

from bastion.cli import main

main()
