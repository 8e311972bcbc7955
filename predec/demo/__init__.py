"""``predec demo``: fine-tune and compare dense models on the embedded synthetic benchmark, from predec's model zoo.

The demo is a small graph of **stages**, each run in its own directory under ``<out>/stages/``: with
``--from-scratch``, ``zoo/<entry>`` rebuilds the pre-trained weights from their recipes first; then
``finetune/<task>/<variant>/n<labels>/seed<k>`` fine-tunes one variant on a labelled split (selecting its weights on
validation scenes when asked) and evaluates it on held-out scenes, and ``probe/<task>/<variant>/n<labels>/seed<k>``
trains a linear probe on a variant's frozen pre-trained features. Without ``--from-scratch`` the zoo's shipped entries
are loaded by name (sha256-checked) and no pre-training runs. Data flows one way: :mod:`~predec.demo.settings`
(variants, comparisons, settings) → :mod:`~predec.demo.stages` (the plan, one stage's execution) →
:mod:`~predec.demo.runner` (caching, workers) → :mod:`~predec.demo.results` (statistics, ``results.json``) →
:mod:`~predec.demo.report` (``report.md``, figures).
"""

from predec.demo.results import collect_results, compare, mean_std
from predec.demo.runner import Demo, run_demo
from predec.demo.settings import (
    COMPARISONS,
    DECISIVE_VARIANTS,
    TASK_METRICS,
    VARIANT_NAMES,
    VARIANTS,
    Comparison,
    DemoConfig,
    FinetuneSettings,
    ProbeSettings,
    Variant,
    ZooSettings,
    load_demo_config,
)
from predec.demo.stages import Stage, plan

__all__ = [
    "COMPARISONS",
    "DECISIVE_VARIANTS",
    "TASK_METRICS",
    "VARIANTS",
    "VARIANT_NAMES",
    "Comparison",
    "Demo",
    "DemoConfig",
    "FinetuneSettings",
    "ProbeSettings",
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
