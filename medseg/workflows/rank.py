"""Active learning: order unlabelled cases by the model's uncertainty (what ``python -m medseg.rank`` does).

Each case runs through the bundle's prediction chain up to the class probabilities on the preprocessed grid
(zero guidance for a click-guided bundle: its automatic segmentation). The score is the mean normalised
entropy ``-sum p log p / log C`` over the voxels predicted as foreground (over all voxels when none is): 0 for
a confident model, 1 where every class is equally likely. Most uncertain first; written as CSV
(``rank,case,uncertainty,foreground_voxels``), atomically.

Example:
    >>> from medseg.workflows import rank
    >>> rows = rank.run("bundles/liver_ct_segmentation", "unlabelled/", "ranking.csv")
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from medseg.bundle.load import LoadedBundle, load_bundle
from medseg.data.images import check_can_write
from medseg.errors import MedsegError, failure_line
from medseg.fileio import atomic_write_text
from medseg.inference import torch_forward
from medseg.inference.predict import check_preprocessed
from medseg.workflows.predict import check_input, check_unique_cases, find_inputs, use_series, without_masks


def probabilities(bundle: LoadedBundle, path: Path, device: torch.device | str = "cpu",
                  series: str | None = None) -> torch.Tensor:
    """Softmax class probabilities ``(C, *spatial)`` of one case on the chain's preprocessed grid (``series``: the
    series to read of a DICOM folder that holds several, with :func:`use_series` done on the bundle)."""
    check_input(bundle, path, series)  # medseg.predict's header checks first: a damaged or 2D file is one line
    chain = bundle.chain
    data = chain.preprocessing({"image": str(path)})
    image = check_preprocessed(chain, data["image"], path.name)
    with torch.no_grad():
        logits = chain.inferer(image.unsqueeze(0).to(device), torch_forward(bundle.network))[0]
    return torch.softmax(torch.as_tensor(logits).float(), 0)


def uncertainty(prob: torch.Tensor) -> tuple[float, int]:
    """(mean normalised entropy inside the predicted foreground, or everywhere when it is empty; its voxels)."""
    n = prob.shape[0]
    entropy = -(prob * torch.log(prob.clamp_min(1e-12))).sum(0) / math.log(n)
    foreground = prob.argmax(0) > 0
    inside = entropy[foreground] if bool(foreground.any()) else entropy.reshape(-1)
    return float(inside.mean()), int(foreground.sum())


def _check_writable(out: Path) -> None:
    """Create the CSV's folder and try a file in it, before any case is scored: a folder that cannot be made or
    written ended in an OSError traceback after every case had been scored."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise MedsegError(f"--output {out}: cannot make its folder ({err.strerror or type(err).__name__}); give a"
                          " CSV path in a folder you can write to") from None
    check_can_write(out.parent, f"--output {out}")


def run(bundle: str | Path, inputs: str | Path, output: str | Path, *, device: str = "cpu", trust: bool = False,
        on_case: Callable[[str, float], None] | None = None,
        on_skip: Callable[[str, str], None] | None = None, series: str | None = None,
        on_begin: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """Score every case under ``inputs``; write ``output`` (CSV), most uncertain first; returns the rows.
    ``series``: which series (SeriesInstanceUID) where a DICOM folder holds several, as ``medseg.predict --series``.

    A case that cannot be read or segmented is reported through ``on_skip(case, reason)`` (when given) and left out
    of the ranking; with a single case, or none left, it stops with one :class:`MedsegError` line. A mask medseg
    wrote beside its case (``<case>_seg``) is not ranked (reported through ``on_skip``). ``on_begin(n)``: called
    with the number of cases before the first is scored (progress)."""
    out = Path(output)
    above = next((p for p in out.absolute().parents if p.exists()), None)  # a file anywhere on the way is refused now
    if out.is_dir() or (above is not None and not above.is_dir()):
        raise MedsegError(f"--output {out}: give a CSV file name (a folder or a path under a file was given)")
    cases = without_masks(find_inputs(Path(inputs)), on_skip)
    check_unique_cases(cases, inputs, "the CSV would list two rows of one name")
    _check_writable(out)
    loaded = load_bundle(Path(bundle), torch.device(device), trust=trust)
    use_series(loaded, series)
    if len(loaded.chain.postprocessing.transforms) == 0:
        raise MedsegError(f"{bundle}: no postprocessing in its chain")
    rows = []
    if on_begin is not None:
        on_begin(len(cases))
    for name, path in cases:  # find_inputs names a DICOM case called after its patient patientN
        try:
            score, voxels = uncertainty(probabilities(loaded, path, device, series))
        except Exception as err:  # one unreadable case must not lose the others' scores
            reason = failure_line(err)
            if len(cases) == 1:
                raise MedsegError(f"{path}: cannot be ranked ({reason})") from None
            if on_skip is not None:
                on_skip(name, reason)
            continue
        rows.append({"case": name, "uncertainty": round(score, 6), "foreground_voxels": voxels, "path": str(path)})
        if on_case is not None:
            on_case(name, score)
    rows.sort(key=lambda r: (-r["uncertainty"], r["case"]))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["rank", "case", "uncertainty", "foreground_voxels"], lineterminator="\n")
    writer.writeheader()
    for i, row in enumerate(rows, start=1):
        row["rank"] = i
        writer.writerow({k: row[k] for k in writer.fieldnames})
    if not rows:
        raise MedsegError(f"--input {inputs}: no case could be ranked")
    atomic_write_text(out, buffer.getvalue())
    return rows
