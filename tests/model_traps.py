"""Model artifacts a registry writer could upload to run code in whatever process deserialises them."""

from pathlib import Path
from typing import Any


class UnpickleTrap:
    """Creates ``marker`` in whatever process unpickles it, as any pickle a registry writer uploads can."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return open, (self.marker, "w")


class SkopsTrap:
    """Creates the file its state names when skops builds it (its __setstate__ runs); importable by a worker."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __getstate__(self) -> dict[str, str]:
        return {"marker": self.marker}

    def __setstate__(self, state: dict[str, str]) -> None:
        Path(state["marker"]).touch()
        self.__dict__.update(state)
