"""Images: content checks, references, the blob store and its backends, replication between
replicas, and garbage collection. Image bytes never go to etcd (docs/images.md)."""

from controller.images.checks import CHUNK_BYTES, MAX_IMAGE_BYTES, CheckedImage, check_image

__all__ = ["CHUNK_BYTES", "MAX_IMAGE_BYTES", "CheckedImage", "check_image"]
