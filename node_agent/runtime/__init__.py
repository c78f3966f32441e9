"""The partition runtime: static Linux ELF guests on Unicorn vCPUs with a sandboxed filesystem."""

from .loader import validate_image
from .machine import Machine
from .spec import STOP_EXIT_CODE, Console, ExitStatus, ImageError, PartitionSpec

__all__ = ["Machine", "PartitionSpec", "ExitStatus", "Console", "ImageError", "validate_image",
           "STOP_EXIT_CODE"]
