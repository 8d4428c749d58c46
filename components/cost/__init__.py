"""Cost and service levels: what a deployment will cost and whether it meets its targets.

Plain functions the selection stage calls on its measured figures:
:func:`check_service_levels`, :func:`estimate_costs` and :func:`require_feasible`.
"""

from vxdeploy.components.cost.estimate import HOURS_PER_MONTH, CandidateCost, CostReport, estimate_costs
from vxdeploy.components.cost.measured import (
    MeasuredCandidate,
    local_cpu_description,
    vertex_accelerator_name,
)
from vxdeploy.components.cost.prices import AcceleratorPrice, MachinePrice, PriceTable, load_price_table
from vxdeploy.components.cost.service_levels import (
    OperatingPoint,
    check_service_levels,
    operating_point,
    require_feasible,
)

__all__ = [
    "HOURS_PER_MONTH",
    "AcceleratorPrice",
    "CandidateCost",
    "CostReport",
    "MachinePrice",
    "MeasuredCandidate",
    "OperatingPoint",
    "PriceTable",
    "check_service_levels",
    "estimate_costs",
    "load_price_table",
    "local_cpu_description",
    "operating_point",
    "require_feasible",
    "vertex_accelerator_name",
]
