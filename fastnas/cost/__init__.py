"""The cost of an evaluation network: measured per candidate op (:mod:`.measure`), laid out as a
table the search weighs its candidates with (:mod:`.model`), and a derived genotype brought within a
budget (:mod:`.fit`). ``fastnas cost`` (``python -m fastnas.cost``) prints genotypes' costs."""

from fastnas.cost.fit import budget_report_lines, fit_channels, fit_genotype, fit_to_budget
from fastnas.cost.measure import (
    METRICS,
    UNITS,
    EvalShape,
    LatencySetting,
    LatencyTable,
    build_eval_network,
    default_latency_cache,
    human,
    measure_genotype,
    parse_amount,
)
from fastnas.cost.model import (
    CostModel,
    cheapest_cost,
    cost_report,
    expected_cell_cost,
    expected_cost,
    format_report,
    free_op_mask,
    make_cost_model,
)

__all__ = [
    "METRICS", "UNITS", "EvalShape", "CostModel", "LatencySetting", "LatencyTable", "parse_amount", "human",
    "expected_cost", "expected_cell_cost", "free_op_mask", "fit_genotype", "fit_channels", "fit_to_budget",
    "budget_report_lines",
    "cheapest_cost", "cost_report", "format_report", "make_cost_model", "measure_genotype", "build_eval_network",
    "default_latency_cache",
]
