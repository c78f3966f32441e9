"""Viridian controller: API server, etcd store, scheduler, node lifecycle and the CLI."""
