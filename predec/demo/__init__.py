"""``predec demo``: fine-tune and compare dense models on the embedded synthetic benchmark, from predec's model zoo.

The demo is a small graph of **stages**, each run in its own directory under ``<out>/stages/``: with
``--from-scratch``, ``zoo/<entry>`` rebuilds the pre-trained weights from their recipes first; then
``finetune/<task>/<variant>/n<labels>/seed<k>`` fine-tunes one variant on a labelled split and evaluates it on held-out
scenes. Without ``--from-scratch`` the zoo's shipped entries are loaded by name (sha256-checked) and no pre-training
runs. Data flows one way: :mod:`~predec.demo.settings` (variants, comparisons, settings) → :mod:`~predec.demo.stages`
(the plan, one stage's execution) → :mod:`~predec.demo.runner` (caching, workers) → :mod:`~predec.demo.results`
(statistics, ``results.json``) → :mod:`~predec.demo.report` (``report.md``, figures).
"""

from predec.demo.results import collect_results, compare, mean_std
from predec.demo.runner import Demo, run_demo
from predec.demo.settings import (
    COMPARISONS,
    TASK_METRICS,
    VARIANT_NAMES,
    VARIANTS,
    DemoConfig,
    FinetuneSettings,
    Variant,
    ZooSettings,
    load_demo_config,
)
from predec.demo.stages import Stage, plan

__all__ = [
    "COMPARISONS",
    "TASK_METRICS",
    "VARIANTS",
    "VARIANT_NAMES",
    "Demo",
    "DemoConfig",
    "FinetuneSettings",
    "Stage",
    "Variant",
    "ZooSettings",
    "collect_results",
    "compare",
    "load_demo_config",
    "mean_std",
    "plan",
    "run_demo",
]
