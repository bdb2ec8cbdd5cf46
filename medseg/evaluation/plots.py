"""The box plot of an evaluation: one panel per headline metric, one box per class, each case a dot."""

from __future__ import annotations

import io
from pathlib import Path

from medseg.fileio import atomic_write_bytes

PANELS = (("dice", "Dice"), ("hd95_mm", "HD95 ({unit})"), ("assd_mm", "ASSD ({unit})"), ("nsd", "NSD"))


def boxplot(per_case: dict[str, dict[str, dict]], path: Path, unit: str = "mm") -> Path:
    """Write ``path`` (PNG, 400 px high, 400 px per panel) atomically; returns ``path``."""
    # deferred: start-up time (matplotlib costs ~0.5 s to import); Figure + Agg canvas, no pyplot (another ~0.35 s)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    classes = list(dict.fromkeys(c for case in per_case.values() for c in case))
    fig = Figure(figsize=(4 * len(PANELS), 4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(PANELS))
    for ax, (key, title) in zip(axes, PANELS):
        title = title.format(unit=unit)  # mm; px or µm for pictures
        data = [[float(case[c][key]) for case in per_case.values() if c in case] for c in classes]
        ax.boxplot(data, showfliers=False)
        ax.set_xticks(range(1, len(classes) + 1), classes)
        for i, values in enumerate(data, 1):
            ax.scatter([i] * len(values), values, s=12, alpha=0.6, color="tab:blue")
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{len(per_case)} cases")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)
