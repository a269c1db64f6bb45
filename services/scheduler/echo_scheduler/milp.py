"""A small mixed-integer model builder over HiGHS (``highspy``): columns, sparse rows, a
time limit and an optional starting solution. Nothing here knows about placement."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import highspy
import numpy as np

INF = highspy.kHighsInf


@dataclass
class MilpResult:
    status: str  # "optimal", "time limit", "infeasible", or HiGHS's own word
    values: list[float]  # by column (empty without a solution)
    objective: float
    gap: float  # relative MIP gap of the returned solution (0 when optimal)


@dataclass
class Milp:
    costs: list[float] = field(default_factory=list)
    lower: list[float] = field(default_factory=list)
    upper: list[float] = field(default_factory=list)
    integer: list[bool] = field(default_factory=list)
    row_lower: list[float] = field(default_factory=list)
    row_upper: list[float] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)
    index: list[int] = field(default_factory=list)
    value: list[float] = field(default_factory=list)
    offset: float = 0.0

    def col(self, cost: float = 0.0, lo: float = 0.0, hi: float = INF, *, integer: bool = False) -> int:
        self.costs.append(cost)
        self.lower.append(lo)
        self.upper.append(hi)
        self.integer.append(integer)
        return len(self.costs) - 1

    def binary(self, cost: float = 0.0) -> int:
        return self.col(cost, 0.0, 1.0, integer=True)

    def row(self, coefs: Mapping[int, float], lo: float = -INF, hi: float = INF) -> None:
        """``lo <= Σ coefs[c] · x[c] <= hi`` (zero coefficients dropped)."""
        self.starts.append(len(self.index))
        for c, v in coefs.items():
            if v != 0.0:
                self.index.append(c)
                self.value.append(v)
        self.row_lower.append(lo)
        self.row_upper.append(hi)

    @property
    def size(self) -> tuple[int, int]:
        return len(self.costs), len(self.row_lower)

    def solve(self, *, time_limit: float, start: Mapping[int, float] | None = None) -> MilpResult:
        h = highspy.Highs()  # type: ignore[no-untyped-call]
        h.setOptionValue("output_flag", False)
        h.setOptionValue("time_limit", float(time_limit))
        h.setOptionValue("mip_rel_gap", 1e-6)
        h.setOptionValue("threads", 1)
        h.setOptionValue("random_seed", 0)
        ncol, nrow = self.size
        lp = highspy.HighsLp()
        lp.num_col_ = ncol
        lp.num_row_ = nrow
        lp.col_cost_ = np.array(self.costs, dtype=np.float64)
        lp.col_lower_ = np.array(self.lower, dtype=np.float64)
        lp.col_upper_ = np.array(self.upper, dtype=np.float64)
        lp.row_lower_ = np.array(self.row_lower, dtype=np.float64)
        lp.row_upper_ = np.array(self.row_upper, dtype=np.float64)
        lp.offset_ = self.offset
        lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
        lp.a_matrix_.num_col_ = ncol
        lp.a_matrix_.num_row_ = nrow
        lp.a_matrix_.start_ = np.array([*self.starts, len(self.index)], dtype=np.int32)
        lp.a_matrix_.index_ = np.array(self.index, dtype=np.int32)
        lp.a_matrix_.value_ = np.array(self.value, dtype=np.float64)
        lp.integrality_ = [
            highspy.HighsVarType.kInteger if i else highspy.HighsVarType.kContinuous for i in self.integer
        ]
        h.passModel(lp)
        if start:
            cols = sorted(start)
            h.setSolution(
                len(cols),
                np.array(cols, dtype=np.int32),
                np.array([start[c] for c in cols], dtype=np.float64),
            )
        h.run()
        status = h.getModelStatus()
        info: Any = h.getInfo()
        has_solution = int(info.primal_solution_status) == 2  # kSolutionStatusFeasible
        values = list(h.getSolution().col_value) if has_solution else []
        word = {
            highspy.HighsModelStatus.kOptimal: "optimal",
            highspy.HighsModelStatus.kTimeLimit: "time limit",
            highspy.HighsModelStatus.kInfeasible: "infeasible",
        }.get(status, h.modelStatusToString(status))
        gap = float(info.mip_gap) if has_solution and word != "optimal" else 0.0
        return MilpResult(word, values, float(info.objective_function_value), gap)
