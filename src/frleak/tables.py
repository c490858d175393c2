"""Plain-text result tables (Markdown) for benchmarks and reports: a value with its interval, one row per result."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def fmt_ci(row: Mapping[str, Any], key: str, digits: int = 3) -> str:
    """``0.612 [0.588, 0.637]`` from ``row[key]`` and ``row[key + '_ci']``."""
    if key not in row or row[key] is None:
        return "–"
    ci = row.get(f"{key}_ci")
    if ci:
        return f"{row[key]:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"
    return fmt(row[key], digits)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]],
                   with_ci: Sequence[str] = ()) -> str:
    """columns: (header, key). Keys listed in ``with_ci`` are shown with their intervals."""
    head = "| " + " | ".join(h for h, _ in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    lines = [head, sep]
    for r in rows:
        cells = [fmt_ci(r, k) if k in with_ci else fmt(r.get(k)) for _, k in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


MIA_COLUMNS = [("setting", "setting"), ("non-members", "nonmember"), ("attack", "attack"), ("AUC", "auc"),
               ("accuracy", "accuracy"), ("balanced acc.", "balanced_accuracy"), ("TPR@10%FPR", "tpr_at_10pct_fpr"),
               ("TPR@1%FPR", "tpr_at_1pct_fpr"), ("TPR@0.1%FPR", "tpr_at_0.1pct_fpr")]
MIA_CI = ("auc", "accuracy", "balanced_accuracy", "tpr_at_10pct_fpr", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr")
