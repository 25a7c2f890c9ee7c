"""The ``demo`` command's summary: validation scores of its fit runs and the tables of its attack runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning_seg.io import write_json, write_text


def fit_table(fits: dict[str, dict[str, Any]]) -> str:
    """Markdown: per data set and structure, the final validation Dice / IoU, epochs, fit time and run folder."""
    lines = ["| data (synthetic) | structure | val Dice | val IoU | epochs | fit time (s) | run folder |",
             "|---|---|---|---|---|---|---|"]
    for name, result in fits.items():
        metrics = result["metrics"]
        for s in sorted(k.split("_", 1)[1] for k in metrics if k.startswith("val/dice_")):
            lines.append(f"| {name} | {s} | {metrics[f'val/dice_{s}']:.3f} | {metrics[f'val/iou_{s}']:.3f} | {result['epochs']} | "
                         f"{result['fit_seconds']:.0f} | `{result['run_dir']}` |")
    return "\n".join(lines)


def attack_tables(attacks: dict[str, dict[str, Any]]) -> str:
    """Each attack run's tables under the data set's name and run folder."""
    return "\n\n".join(f"**{name}** (`{a['run_dir']}`)\n\n{a['table']}" for name, a in attacks.items())


def write_demo_summary(out: Path, summary: dict[str, Any], table: str, attacks: str) -> None:
    """``summary.md`` (fit table, attack tables, preview picture) and ``summary.json`` in ``out``."""
    write_text(out / "summary.md", f"# lightning_seg demo\n\n{table}\n\n## Attacks\n\n{attacks}\n\n![preview](preview.png)\n")
    write_json(out / "summary.json", summary)


__all__ = ["attack_tables", "fit_table", "write_demo_summary"]
