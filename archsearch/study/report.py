"""The course report's table (``studies/report.toml``): its 17 rows, their specs and the reported metrics."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

from archsearch.core.errors import UserError
from archsearch.core.protocol import LOSSES, REPORT_FIRST_SEED, REPORT_PROTOCOL, REPORT_RUNS
from archsearch.core.resources import read_toml, studies_dir
from archsearch.models import Spec, count_params, parse_spec

__all__ = ["ReportRow", "parse_indexes", "report_protocol", "report_rows"]


@dataclass(frozen=True)
class ReportRow:
    index: int
    label: str
    spec: Spec
    reported_params: int
    reported_acc: float
    reported_prec: float
    reported_rec: float

    @property
    def params(self) -> int:
        """Parameters of the model archsearch builds for this row (equal to ``reported_params``; tested)."""
        return count_params(self.spec)

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "label": self.label,
            "spec": str(self.spec),
            "kind": self.spec.kind,
            "depth": self.spec.depth,
            "params": self.params,
            "reported_params": self.reported_params,
            "reported_acc": self.reported_acc,
            "reported_prec": self.reported_prec,
            "reported_rec": self.reported_rec,
        }


@cache
def _table() -> dict[str, Any]:
    return read_toml(studies_dir() / "report.toml")


def report_protocol() -> dict[str, Any]:
    """The report's protocol as it states it (written once, in :mod:`archsearch.core.protocol`)."""
    p = REPORT_PROTOCOL
    return {
        "optimizer": "AdamW", "lr": p.lr, "weight_decay": p.weight_decay, "init": "xavier_normal",
        "seed": REPORT_FIRST_SEED, "epochs": p.epochs, "batch_size": p.batch_size, "runs": REPORT_RUNS,
        "losses": list(LOSSES),
    }  # fmt: skip


@cache
def report_rows() -> tuple[ReportRow, ...]:
    return tuple(
        ReportRow(r["index"], r["label"], parse_spec(r["spec"]), r["params"], r["acc"], r["prec"], r["rec"])
        for r in _table()["row"]
    )


def parse_indexes(text: str) -> list[int]:
    """``"0,6,16"`` or ``"0-3,16"`` or ``"all"`` -> sorted unique row indexes; unknown indexes are a ``UserError``."""
    n = len(report_rows())
    if text.strip().lower() == "all":
        return list(range(n))
    out: set[int] = set()
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        try:
            first, last = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise UserError(f"cannot read model index {part.strip()!r}; use e.g. 0,6,16 or 0-5") from None
        for i in range(first, last + 1):
            if not 0 <= i < n:
                raise UserError(f"unknown model index {i}; the report has rows 0 to {n - 1}")
            out.add(i)
    if not out:
        raise UserError("no model indexes given")
    return sorted(out)
