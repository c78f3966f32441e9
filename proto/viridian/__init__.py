"""Viridian's API package (generated protobuf and gRPC code lives in viridian.v1)."""
