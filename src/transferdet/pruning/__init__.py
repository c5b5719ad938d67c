"""Structured pruning that shrinks the network: TLT's criterion on Torch-Pruning's dependency graph."""
