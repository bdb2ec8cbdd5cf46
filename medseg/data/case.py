"""One labelled (or unlabelled) case: its name, one image path per channel, and its label path.

``Case.item()`` is the dict MONAI's dictionary transforms take (``{"image": path | [path per channel],
"label": path}``, the shape ``cases.json`` stores); ``Case.from_item`` reads one back. A Case is also a
read-only mapping of that dict (``case["image"]``), so code written for case dicts takes it unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medseg.data.labelmaps import case_name
from medseg.errors import MedsegError


@dataclass(frozen=True, eq=True)
class Case(Mapping):
    name: str
    images: tuple[Path, ...]
    label: Path | None = None

    @classmethod
    def of(cls, images: Any, label: Any = None) -> Case:
        """A case named after its first image (file name without the image suffix; a DICOM folder's name)."""
        paths = tuple(Path(p) for p in (images if isinstance(images, (list, tuple)) else [images]))
        if not paths:
            raise MedsegError("a case needs at least one image path")
        return cls(case_name(paths[0]), paths, Path(label) if label is not None else None)

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> Case:
        """The case of a MONAI dict ``{"image": path | [paths], "label": path}`` (other keys are ignored)."""
        if "image" not in item:
            raise MedsegError(f"a case needs an 'image' entry, got keys {sorted(item)}")
        return cls.of(item["image"], item.get("label"))

    @property
    def image(self) -> Path:
        """The first channel's image (the one that names the case and gives the geometry)."""
        return self.images[0]

    def item(self) -> dict[str, Any]:
        """The MONAI dict: one path as a string for one channel, a list of strings for several."""
        image: Any = str(self.images[0]) if len(self.images) == 1 else [str(p) for p in self.images]
        return {"image": image} if self.label is None else {"image": image, "label": str(self.label)}

    # read-only mapping of item(), for code that takes case dicts
    def __getitem__(self, key: str) -> Any:
        return self.item()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.item())

    def __len__(self) -> int:
        return 1 if self.label is None else 2

    def __hash__(self) -> int:
        return hash((self.name, self.images, self.label))


def items(cases: list[Case]) -> list[dict[str, Any]]:
    """The MONAI dicts of ``cases`` (for datasets and transforms)."""
    return [c.item() for c in cases]
