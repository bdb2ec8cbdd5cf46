"""Medical Segmentation Decathlon layout: ``dataset.json`` with ``imagesTr/`` and ``labelsTr/``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medseg.data.case import Case
from medseg.data.split import train_val_split
from medseg.errors import MedsegError


#: missing files of a manifest or CSV listed by path in the message (the count names them all)
MISSING_SHOWN = 10


def _case_list(entries: Any, root: Path, manifest: Path, key: str, missing: list[str]) -> list[Case]:
    """The cases of one list of the manifest; its missing files are added to ``missing``, every one of them."""
    if not isinstance(entries, list) or not entries:
        raise MedsegError(f"{manifest}: '{key}' must be a non-empty list of {{image, label}} entries")
    cases = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not {"image", "label"} <= set(entry):
            raise MedsegError(f"{manifest}: {key}[{i}] must have 'image' and 'label' paths")
        case = {}
        for field in ("image", "label"):
            path = (root / str(entry[field])).resolve()
            if not path.exists():
                missing.append(f"{key}[{i}].{field}: {path} does not exist")
            case[field] = str(path)
        cases.append(Case.of(case["image"], case["label"]))
    return cases


def refuse_missing(listing: Path, missing: list[str], relative_to: str, entries: str) -> None:
    """One :class:`MedsegError` naming every file a dataset listing (``dataset.json``, a CSV) points to and that is
    not there: the count, then the first :data:`MISSING_SHOWN` one per line; nothing when ``missing`` is empty.
    ``relative_to``: where its paths start ("its folder"); ``entries``: what to fix ("entries", "rows")."""
    if not missing:
        return
    shown = missing[:MISSING_SHOWN]
    more = [f"  ... and {len(missing) - len(shown)} more"] if len(missing) > len(shown) else []
    raise MedsegError("\n".join([f"{listing}: {len(missing)} listed file(s) do not exist (paths are relative to"
                                  f" {relative_to}, {listing.parent}); fix or remove their {entries}:",
                                  *(f"  {line}" for line in shown), *more]))


def read_manifest(path: Path, needs: str = "this layout needs a dataset.json", holding: str = "") -> dict:
    """A ``dataset.json`` as a dict, or one line naming the file and what is wrong with it."""
    if not path.is_file():
        raise MedsegError(f"{path}: missing; {needs}")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise MedsegError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from err
    if not isinstance(meta, dict):
        raise MedsegError(f"{path}: must be a JSON object" + (f" {holding}" if holding else ""))
    return meta


def msd_cases(root: Path, expected_labels: dict[str, int],
              label_map: dict[int, int] | None = None) -> tuple[list[Case], list[Case] | None]:
    """The ``training`` cases of an MSD-style folder and its fixed ``validation`` list (medseg's extension, used
    by the built-in sample), or None without one; checks the manifest and that every expected label value is
    declared, as itself or as the file value ``label_map`` (``data.label_map``: file value -> label value) maps to
    it (a manifest declaring BraTS's 0, 1, 2, 4 for labels trained as 0..3)."""
    manifest = root / "dataset.json"
    if not root.is_dir():
        raise MedsegError(f"dataset folder {root} does not exist: set --data-dir or data.dataset to where it is")
    meta = read_manifest(manifest, "an MSD dataset folder needs dataset.json, imagesTr/ and labelsTr/",
                         "with 'labels' and 'training'")
    labels = meta.get("labels")
    if not isinstance(labels, dict):
        raise MedsegError(f"{manifest}: 'labels' must map label values to names, e.g. {{\"0\": \"background\"}}")
    try:
        declared = {int(k) for k in labels}
    except ValueError as err:
        raise MedsegError(f"{manifest}: 'labels' keys must be integer label values ({err})") from err
    stored = {int(v): int(k) for k, v in (label_map or {}).items()}
    missing = sorted(v for v in set(expected_labels.values()) if v not in declared and stored.get(v) not in declared)
    if missing:
        raise MedsegError(f"{manifest}: 'labels' lacks values {missing} that the task config expects")
    missing: list[str] = []
    train = _case_list(meta.get("training"), root, manifest, "training", missing)
    val = _case_list(meta["validation"], root, manifest, "validation", missing) if "validation" in meta else None
    refuse_missing(manifest, missing, "its folder", "entries")
    return train, val


def load_msd_dataset(
    root: Path, expected_labels: dict[str, int], val_fraction: float, seed: int
) -> tuple[list[Case], list[Case]]:
    """Read an MSD-style dataset folder and split it into training and validation cases.

    A ``validation`` list in ``dataset.json`` fixes the split; otherwise ``val_fraction`` of the ``training``
    cases (at least one) are held out (:func:`medseg.data.split.train_val_split` with ``seed``).

    Args:
        root: the folder holding ``dataset.json``.
        expected_labels: label name -> value from the task config; every value must be declared.
        val_fraction: share of cases held out for validation when the split is not fixed.
        seed: shuffling seed for the split.

    Returns:
        ``(train, val)`` lists of :class:`medseg.data.case.Case` (each also reads as ``{"image", "label"}``).
    """
    train, val = msd_cases(root, expected_labels)
    if val is not None:
        return train, val
    if len(train) < 2:
        raise MedsegError(f"{root / 'dataset.json'}: needs at least 2 training cases to hold one out for validation")
    return train_val_split(train, val_fraction, seed)
