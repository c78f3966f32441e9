"""Viridian node agent: registers a node, keeps its session, runs partitions."""
