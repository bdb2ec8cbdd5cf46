"""Self-configuring pipelines: a dataset fingerprint (:mod:`.fingerprint`), named rules each returning a value
and a one-line reason (:mod:`.rules`), step times measured on this machine with the engine's builders
(:mod:`.timing`), and the planner writing a commented pipeline YAML + ``plan.json`` (:mod:`.planner`);
``auto`` keys of a YAML filled from a plan (:mod:`.auto`).

Layer: above :mod:`medseg.engine` (it times real training steps), below :mod:`medseg.workflows`.
"""

from medseg.plan.fingerprint import fingerprint
from medseg.plan.planner import PLANNED_KEYS, Plan, parse_labels, plan_dataset, write_plan
from medseg.plan.rules import Decision

__all__ = ["PLANNED_KEYS", "Decision", "Plan", "fingerprint", "parse_labels", "plan_dataset", "write_plan"]
