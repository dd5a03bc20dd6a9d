"""What several command groups share."""

from __future__ import annotations

DEFAULT_SERVER = "127.0.0.1:50051"
