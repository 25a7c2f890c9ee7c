"""The one set of units of every table and CSV the ``attack`` command (and the API behind it) writes.

Attack results (:class:`lightning_seg.attacks.AttackResult`) and budgets stay in [0,1] image units internally; the
reporting layer converts here, once, and every column name / table header says its unit:

- Linf and RMS of a perturbation, and Linf budgets eps: x255 (1/255 steps of an 8-bit image), columns ``linf_x255``,
  ``rms_x255``, ``eps_x255``; headers "Linf (x255)", "RMS (x255)", "eps (x255)".
- L2 of a perturbation: unnormalised over the whole input in [0,1] units, as the ASMA paper reports it; column
  ``l2``, header "L2 ([0,1] units)".
- Rates and shares (success rate, screening flips, share within tolerance): percent, columns ``*_pct``, headers
  "... (%)". Per image, ``success`` is a 0/1 flag.
- Scores (Dice, IoU, pixel accuracy): fractions in [0,1], headers "... [0,1]".
"""

from __future__ import annotations

from typing import Any

X255 = 255.0

# column names
L2 = "l2"
LINF = "linf_x255"
RMS = "rms_x255"
EPS = "eps_x255"
SUCCESS = "success"  # per image: 0 / 1
SUCCESS_PCT = "success_pct"

# markdown headers
L2_HEAD = "L2 ([0,1] units)"
LINF_HEAD = "Linf (x255)"
RMS_HEAD = "RMS (x255)"
EPS_HEAD = "eps (x255)"
SUCCESS_HEAD = "success (%)"
SCORE = "[0,1]"  # suffix of score headers: "IoU [0,1]", "Dice [0,1]"


def x255(value: float | None) -> float | None:
    """A perturbation size or budget in [0,1] image units, in 1/255 steps."""
    return None if value is None else float(value) * X255


def pct(value: float | None) -> float | None:
    """A rate or share in [0,1], in percent."""
    return None if value is None else 100.0 * float(value)


def perturbation_columns(record: dict[str, Any]) -> dict[str, Any]:
    """An attack record's ``l2`` / ``linf`` / ``rms`` ([0,1] units, as :meth:`AttackResult.to_records`) and ``success``
    (bool) as report columns: ``l2``, ``linf_x255``, ``rms_x255``, ``success`` 0/1; other keys unchanged."""
    out = {}
    for k, v in record.items():
        if k == "linf":
            out[LINF] = x255(v)
        elif k == "rms":
            out[RMS] = x255(v)
        elif k == "success":
            out[SUCCESS] = int(bool(v))
        else:
            out[k] = v
    return out


# clinical aggregates that are shares of images (means of 0/1 flags): reported as ``clin_<name>_pct@<threshold>``
CLINICAL_SHARES = ("n2s", "s2n", "flip", "n2s_of_normal", "target_flip", "target_n2s_of_normal")


def share_key(key: str) -> str:
    """``flip@0.6`` -> ``flip_pct@0.6`` (also ``clin_``-prefixed) for the clinical shares, ``synth_within_tol_share`` -> ``synth_within_tol_pct``;
    other keys unchanged."""
    base, at, threshold = key.partition("@")
    if at and base.removeprefix("clin_") in CLINICAL_SHARES:
        return f"{base}_pct@{threshold}"
    if key.endswith("_share"):
        return key[: -len("_share")] + "_pct"
    return key


def share_columns(summary: dict[str, Any]) -> dict[str, Any]:
    """Aggregates whose key :func:`share_key` renames, in percent under the new key; the others unchanged."""
    return {share_key(k): (pct(v) if share_key(k) != k else v) for k, v in summary.items()}


def fmt_pct(value: float | None, digits: int = 1) -> str:
    """A value already in percent for a table cell ("-" for None)."""
    return "-" if value is None else f"{value:.{digits}f}"


__all__ = ["CLINICAL_SHARES", "EPS", "EPS_HEAD", "L2", "L2_HEAD", "LINF", "LINF_HEAD", "RMS", "RMS_HEAD", "SCORE", "SUCCESS",
           "SUCCESS_HEAD", "SUCCESS_PCT", "X255", "fmt_pct", "pct", "perturbation_columns", "share_columns", "share_key", "x255"]
