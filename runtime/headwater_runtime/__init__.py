"""Headwater control plane: engine, hosts, store and services."""
