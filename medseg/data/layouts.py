"""Dataset layouts chosen by ``data.layout``: ``msd``, ``nnunet`` (v2 raw), ``csv`` and ``folders``.

Every layout yields the same cases: :class:`medseg.data.case.Case` (name, one image path per channel, label
path), where a path may be a DICOM series folder. Before training, :func:`load_dataset` checks each case from the file
headers (image and label on the same grid, readable files) and stops with both geometries in the
message, or with ``data.skip_bad: true`` (``--skip-bad``) leaves the bad cases out and lists them.

- ``msd``: ``dataset.json`` with ``training`` (and medseg's optional fixed ``validation``) lists.
- ``nnunet``: ``dataset.json`` with ``channel_names``, ``labels`` and ``file_ending``; ``imagesTr/CASE_0000<ending>``
  (``_0001`` ... for more channels) and ``labelsTr/CASE<ending>``.
- ``csv``: ``data.dataset`` is a CSV file with ``image`` and ``label`` columns (paths relative to the CSV;
  several channels separated by ``;``).
- ``folders``: ``images/`` and ``labels/`` matched by file stem, any readable format, 2D or 3D, files or
  DICOM series folders. 8-bit masks stored as 0/255 are checked as 0/1 (``fitted.label_map``).
"""

from __future__ import annotations

import csv
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from medseg.data.case import Case
from medseg.data.check import data_problems, header_problems
from medseg.data.labelmaps import case_name, detect_255_label_map
from medseg.data.msd import msd_cases, read_manifest, refuse_missing
from medseg.data.split import train_val_split
from medseg.errors import MedsegError

logger = logging.getLogger("medseg.data")

LAYOUTS = ("msd", "nnunet", "csv", "folders")


def detect_layout(root: Path) -> str:
    """Guess the layout of a dataset path (used by ``medseg.data check`` when given a folder, not a task)."""
    if root.is_file() and root.suffix.lower() == ".csv":
        return "csv"
    if (root / "dataset.json").is_file():
        meta = read_manifest(root / "dataset.json")
        return "nnunet" if "channel_names" in meta or "file_ending" in meta else "msd"
    if (root / "images").is_dir() and (root / "labels").is_dir():
        return "folders"
    raise MedsegError(f"{root}: not a dataset: expected dataset.json (MSD or nnU-Net), images/ + labels/, or a .csv file")


def _nnunet_cases(root: Path) -> list[Case]:
    manifest = root / "dataset.json"
    meta = read_manifest(manifest)
    channels = meta.get("channel_names") or meta.get("modality")
    if not isinstance(channels, dict) or not channels:
        raise MedsegError(f"{manifest}: 'channel_names' must map channel numbers to names, e.g. {{\"0\": \"CT\"}}")
    ending = str(meta.get("file_ending", ".nii.gz"))
    n_channels = len(channels)
    images, labels = root / "imagesTr", root / "labelsTr"
    if not images.is_dir() or not labels.is_dir():
        raise MedsegError(f"{root}: an nnU-Net raw dataset needs imagesTr/ and labelsTr/")
    cases = []
    for label in sorted(labels.iterdir()):
        if not label.name.endswith(ending) or label.name.startswith("."):
            continue
        name = label.name[: -len(ending)]
        paths = [images / f"{name}_{c:04d}{ending}" for c in range(n_channels)]
        missing = [p.name for p in paths if not p.exists()]
        if missing:
            raise MedsegError(f"{images}: case '{name}' lacks {', '.join(missing)} ({n_channels} channel(s) declared)")
        cases.append(Case(name, tuple(paths), label))  # nnU-Net's case id: the label's name, no _0000
    stray = sorted({p.name for p in images.iterdir() if p.name.endswith(ending)}
                   - {p.name for c in cases for p in c.images})
    if stray:
        raise MedsegError(f"{images}: images without a label in labelsTr/: {', '.join(stray[:5])}"
                          f"{' ...' if len(stray) > 5 else ''}")
    expected = meta.get("numTraining")
    if isinstance(expected, int) and expected != len(cases):
        raise MedsegError(f"{manifest}: numTraining is {expected} but labelsTr/ holds {len(cases)} cases")
    if not cases:
        raise MedsegError(f"{labels}: no label files ending in {ending}")
    return cases


def _csv_cases(path: Path) -> list[Case]:
    if not path.is_file():
        raise MedsegError(f"{path}: no such CSV file (data.dataset names the CSV for layout csv)")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"image", "label"} <= set(rows[0]):
        raise MedsegError(f"{path}: needs a header row with 'image' and 'label' columns and at least one case")
    cases = []
    missing: list[str] = []  # every listed file that is not there, not only the first: one line each
    for n, row in enumerate(rows, start=2):
        parts = [p.strip() for p in (row["image"] or "").split(";") if p.strip()]
        label = (row["label"] or "").strip()
        if not parts or not label:
            raise MedsegError(f"{path}: line {n}: empty image or label path")
        resolved = [(path.parent / p).resolve() for p in parts] + [(path.parent / label).resolve()]
        missing += [f"line {n}: {p} does not exist" for p in resolved if not p.exists()]
        cases.append(Case.of(resolved[:-1], resolved[-1]))
    refuse_missing(path, missing, "the CSV's folder", "rows")
    return cases


def _stem_map(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for child in sorted(folder.iterdir()):
        if child.name.startswith("."):
            continue
        name = child.name if child.is_dir() else case_name(child)
        if name in found:
            raise MedsegError(f"{folder}: two entries share the stem '{name}' ({found[name].name}, {child.name})")
        found[name] = child
    return found


def _folder_cases(root: Path) -> list[Case]:
    images, labels = root / "images", root / "labels"
    if not images.is_dir() or not labels.is_dir():
        raise MedsegError(f"{root}: layout 'folders' needs images/ and labels/ sub-folders")
    image_map, label_map = _stem_map(images), _stem_map(labels)
    unlabelled = sorted(set(image_map) - set(label_map))
    orphans = sorted(set(label_map) - set(image_map))
    if orphans:
        raise MedsegError(f"{labels}: labels without an image of the same stem in images/: {', '.join(orphans[:5])}")
    if unlabelled:
        logger.info("%s: %d image(s) without a label left out (%s)", images, len(unlabelled), ", ".join(unlabelled[:5]))
    cases = [Case.of(image_map[k].resolve(), label_map[k].resolve()) for k in sorted(label_map)]
    if not cases:
        raise MedsegError(f"{root}: no image/label pairs with matching stems in images/ and labels/")
    return cases


def _root_for(cfg: dict[str, Any], root: Path) -> Path:
    if not root.exists():
        raise MedsegError(f"dataset {root} does not exist: set --data-dir or data.dataset to where it is")
    return root


def all_cases(cfg: dict[str, Any], root: Path) -> list[Case]:
    """Every labelled case of the dataset at ``root`` in a stable order (file names), per ``data.layout``."""
    layout = cfg.data.layout
    root = _root_for(cfg, Path(root))
    if layout == "msd":
        train, val = msd_cases(root, cfg.data.labels, cfg.data.label_map)  # checks the manifest and labels
        return sorted(train + (val or []), key=lambda c: str(c.image))
    if layout == "nnunet":
        return _nnunet_cases(root)
    if layout == "csv":
        return _csv_cases(root)
    if layout == "folders":
        return _folder_cases(root)
    raise MedsegError(f"data.layout '{layout}': choose one of {', '.join(LAYOUTS)}")


def load_dataset(cfg: dict[str, Any], root: Path, seed: int) -> tuple[list[Case], list[Case]]:
    """Training and validation cases, checked before any training starts: headers (grids), then label values.

    A fixed split (MSD ``validation`` list) is kept; otherwise ``data.val_fraction`` of the cases (at least
    one) are held out (:func:`medseg.data.split.train_val_split` with ``seed``). Bad cases stop with a
    message, or with ``data.skip_bad`` are left out and listed. Labels stored as 0/255 masks are checked as
    0/1 (the config is left alone: ``fit_preprocessing`` records that map in ``fitted.label_map``).
    """
    root = _root_for(cfg, Path(root))
    data = cfg.data
    fixed_val = None
    if data.layout == "msd":
        cases, fixed_val = msd_cases(root, data.labels, data.label_map)
        if fixed_val is None:
            cases = sorted(cases, key=lambda c: str(c.image))  # as all_cases orders them
    else:
        cases = all_cases(cfg, root)
    cases, fixed_val = _good_cases(cfg, root, cases, fixed_val)
    if fixed_val is not None:
        if not cases or not fixed_val:
            raise MedsegError(f"{root}: no training or no validation case left after skipping bad cases")
        return cases, fixed_val
    if len(cases) < 2:
        raise MedsegError(f"{root}: needs at least 2 good labelled cases to hold one out for validation, found {len(cases)}")
    return train_val_split(cases, data.val_fraction, seed)


def _good_cases(cfg: dict[str, Any], root: Path, cases: list[Case],
                fixed_val: list[Case] | None) -> tuple[list[Case], list[Case] | None]:
    """``cases`` and ``fixed_val`` without the bad ones (headers first, then every label's values), or a stop
    naming them unless ``data.skip_bad``."""
    data = cfg.data
    groups = [cases, fixed_val or []]
    logger.info("checking %d case(s): image/label headers, then every label's values",
                sum(len(g) for g in groups))
    found = _problems(groups, header_problems)
    expected = set(data.labels.values())
    label_map = {int(k): int(v) for k, v in data.label_map.items()} or detect_255_label_map(
        dict(data.labels), [c for g, f in zip(groups, found) for c, p in zip(g, f) if not p])
    # label values and NaN/inf in floating-point images: every file is read once (threads: decompression
    # releases the GIL)
    readable = [[c for c, p in zip(g, f) if not p] for g, f in zip(groups, found)]
    values = [iter(v) for v in _problems(readable, lambda c: data_problems(c, expected, label_map))]
    found = [[p or next(v) for p in f] for f, v in zip(found, values)]
    good = [[c for c, p in zip(g, f) if not p] for g, f in zip(groups, found)]
    bad = [(c, p) for g, f in zip(groups, found) for c, p in zip(g, f) if p]
    if bad:
        listing = "; ".join(f"{c.image.name}: {p[0]}" for c, p in bad[:10])
        if not data.skip_bad:
            raise MedsegError(f"{len(bad)} bad case(s) in {root}: {listing}; fix them or set data.skip_bad: true"
                              " (--skip-bad) to leave them out")
        logger.warning("skipping %d bad case(s): %s", len(bad), listing)
    return good[0], (good[1] if fixed_val is not None else None)


def _problems(groups: list[list[Case]], check) -> list[list[list[str]]]:
    """``check(case)`` for every case of every group, on a few threads (file reading and zlib release the GIL)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return [list(pool.map(check, group)) for group in groups]
