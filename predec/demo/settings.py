"""What the demo compares and with which settings: variants, decisive comparisons, the settings schema.

Shared by the stages, the results and the report (this module imports nothing else of the demo). The settings files
are ``predec/configs/demo/{quick,full,benchmark}.yaml``; :class:`DemoConfig`'s defaults are ``full.yaml``'s (tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from predec.config import ConfigError, load_config

TASKS: tuple[str, ...] = ("segmentation", "depth")
CLASSIFICATION = "classification"
SSL_METHODS: tuple[str, ...] = ("slotcon", "decon-sl", "decon-ml")
"""The SSL entries of the encoder + FPN architecture (SlotCon: encoder only)."""
DECON_XNET = "decon-xnet"
"""The DeCon entry of the ×Net architecture (encoder + ×Net decoder)."""
SOURCES: tuple[str, ...] = (CLASSIFICATION, *SSL_METHODS, DECON_XNET)
"""Where pre-trained weights come from: a zoo entry of each kind (:class:`ZooSettings`)."""
NUM_SCENE_CLASSES = 6  # len(predec.data.synthetic.SCENE_CLASSES); checked when a fine-tuning recipe is built
MAX_DEPTH = 10.0
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "segmentation": ("mIoU", "aAcc"),
    "depth": ("abs_rel", "rmse", "d1"),
}
"""Metrics kept per task (names of the engine's metrics.json)."""
HIGHER_IS_BETTER: dict[str, bool] = {"mIoU": True, "aAcc": True, "abs_rel": False, "rmse": False, "d1": True}
NOISE_FACTOR = 2.0
"""A difference exceeds the noise if ``|mean_a − mean_b| > NOISE_FACTOR × pooled std`` (pooled over seeds)."""


def labelled_seed(data_seed: int) -> int:
    """Generator seed of the labelled fine-tuning scenes; the evaluation scenes use ``+ 1``. (The zoo's recipes
    render their objects and unlabeled scenes with other seeds: 20/21 and 100.)"""
    return 1000 * data_seed + 10


# --------------------------------------------------------------------------------------------------------------
# Variants and comparisons
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """A fine-tuned model of the comparison.

    Attributes:
        name: identifier (directory names, tables).
        arch: dense architecture (``xnet``, ``fpn``, ``unet``).
        description: one line for the report.
        encoder_source: where the encoder weights come from: ``classification``, an SSL method, or None (random).
        decoder_source: where the decoder weights come from: ``classification`` (the ×Net decoder backbone), an
            SSL method (the whole pre-trained decoder), or None (random).
    """

    name: str
    arch: str
    description: str
    encoder_source: str | None
    decoder_source: str | None

    @property
    def sources(self) -> tuple[str, ...]:
        """The zoo entry kinds this variant needs (without repetition)."""
        return tuple(dict.fromkeys(s for s in (self.encoder_source, self.decoder_source) if s))


VARIANTS: tuple[Variant, ...] = (
    Variant("xnet_pt_dec", "xnet", "×Net, pre-trained encoder × pre-trained decoder", CLASSIFICATION, CLASSIFICATION),
    Variant("xnet_rand_dec", "xnet", "×Net, pre-trained encoder × random decoder", CLASSIFICATION, None),
    Variant("xnet_decon_dec", "xnet", "×Net, encoder + decoder from DeCon (×Net × DeCon)", DECON_XNET, DECON_XNET),
    Variant("fpn_pt_enc", "fpn", "FPN, pre-trained encoder, random decoder", CLASSIFICATION, None),
    Variant("unet_pt_enc", "unet", "U-Net, pre-trained encoder, random decoder", CLASSIFICATION, None),
    Variant("fpn_decon_ml", "fpn", "FPN, encoder + decoder from DeCon-ML", "decon-ml", "decon-ml"),
    Variant("fpn_decon_sl", "fpn", "FPN, encoder + decoder from DeCon-SL", "decon-sl", "decon-sl"),
    Variant("fpn_slotcon", "fpn", "FPN, encoder from SlotCon, random decoder", "slotcon", None),
    Variant("fpn_scratch", "fpn", "FPN, no pre-training", None, None),
)
IMAGE_DIVISOR = 32
"""Output stride of every demo model (ResNet encoder; ×Net's decoder backbone too): scene sizes are multiples of it."""

VARIANT_NAMES: tuple[str, ...] = tuple(v.name for v in VARIANTS)


@dataclass(frozen=True)
class Comparison:
    """Two variants compared by the noise rule.

    Attributes:
        a: the variant asked about.
        b: the variant it is compared with.
        question: what the comparison answers (one line).
        decisive: one of the questions the demo is for (its variants get ``finetune.seeds``; the others
            ``finetune.reference_seeds``).
    """

    a: str
    b: str
    question: str
    decisive: bool = True


COMPARISONS: tuple[Comparison, ...] = (
    Comparison("xnet_pt_dec", "xnet_rand_dec", "×Net: pre-trained vs random decoder"),
    Comparison("fpn_decon_ml", "fpn_slotcon", "FPN: DeCon-ML (encoder + decoder) vs SlotCon (encoder only)"),
    Comparison(
        "fpn_decon_sl", "fpn_slotcon", "FPN: DeCon-SL (encoder + decoder) vs SlotCon (encoder only)", decisive=False
    ),
    Comparison("xnet_decon_dec", "xnet_pt_dec", "×Net × DeCon: DeCon- vs classifier-pre-trained ×Net decoder"),
    Comparison("xnet_decon_dec", "xnet_rand_dec", "×Net × DeCon: DeCon-pre-trained vs random ×Net decoder"),
    Comparison(
        "xnet_pt_dec", "fpn_pt_enc", "pre-trained ×Net decoder vs random FPN decoder (same encoder)", decisive=False
    ),
    Comparison("fpn_pt_enc", "fpn_scratch", "FPN: pre-trained vs random encoder", decisive=False),
)
"""The comparisons: the report says whether a − b exceeds the noise (decisive ones first)."""
DECISIVE_VARIANTS: frozenset[str] = frozenset(n for c in COMPARISONS if c.decisive for n in (c.a, c.b))
"""Variants of a decisive comparison (trained with ``finetune.seeds``)."""


def variant(name: str) -> Variant:
    """The variant called ``name``.

    Raises:
        ConfigError: unknown name (the valid ones are listed).
    """
    for v in VARIANTS:
        if v.name == name:
            return v
    raise ConfigError(f"Unknown demo variant {name!r}; valid: {', '.join(VARIANT_NAMES)}.")


# --------------------------------------------------------------------------------------------------------------
# Settings (YAML: predec/configs/demo/*.yaml)
# --------------------------------------------------------------------------------------------------------------


@dataclass
class ZooSettings:
    """The pre-trained weights: one zoo entry per source (``predec zoo list``).

    By default the demo loads them (sha256-checked); ``predec demo --from-scratch`` first rebuilds them from their
    recipes into ``<out>/zoo`` (the stages ``zoo/<entry>``) and fine-tunes on those.

    Attributes:
        classification: classifier on SynthObjects: every pre-trained encoder, the ×Net decoder backbone, and the
            encoder the SSL entries start from.
        slotcon: SlotCon (encoder only).
        decon_sl: DeCon-SL (encoder + FPN, decoder loss at P2).
        decon_ml: DeCon-ML (encoder + FPN, decoder loss at P2..P5).
        decon_xnet: DeCon on ×Net (encoder + ×Net decoder, decoder loss on the Post Feature Pyramid's output).
        scratch_overrides: ``key=value`` overrides of every zoo recipe rebuilt with ``--from-scratch`` (e.g.
            ``trainer.max_steps=100`` for a short rebuild).
    """

    classification: str = "synth-resnet18h-cls"
    slotcon: str = "synth-resnet18h-slotcon"
    decon_sl: str = "synth-resnet18h-fpn-decon-sl"
    decon_ml: str = "synth-resnet18h-fpn-decon-ml"
    decon_xnet: str = "synth-resnet18h-xnet-decon"
    scratch_overrides: list[str] = field(default_factory=list)

    def entry(self, source: str) -> str:
        """The entry name of a source (``classification``, ``slotcon``, ``decon-sl``, ``decon-ml``, ``decon-xnet``)."""
        return str(getattr(self, source.replace("-", "_")))


@dataclass
class FinetuneSettings:
    """Dense fine-tuning and evaluation.

    Attributes:
        tasks: ``segmentation`` and/or ``depth``.
        variants: names of :data:`VARIANTS` to train.
        seeds: fine-tuning seeds (model init, data order) of the variants of a decisive comparison
            (:data:`DECISIVE_VARIANTS`).
        reference_seeds: seeds of the other variants (None: ``seeds``).
        num_train: label budgets: numbers of labelled training scenes (the first N of one generated set, so smaller
            budgets are subsets of larger ones); several give a label-efficiency curve. One number is one budget.
        extra_num_train: more label budgets for some variants only (``{fpn_pt_enc: [2048]}``): a reference run
            beyond the shared budgets without the cost of running every variant there (ignored for a variant
            ``variants`` leaves out).
        num_val: held-out scenes evaluated during training (the validation split that selects the weights), and at
            the end when there is no test split.
        num_test: test scenes (another generator seed) evaluated once with the selected weights; 0: none (the final
            metrics are the validation split's).
        image_size: scene size [H, W].
        scene_options: SynthScenes render options of the labelled, validation and test scenes (e.g. a fixed camera
            pose: ``{camera_height: [1.3, 1.3], camera_pitch_deg: [15, 15]}``).
        max_steps: optimiser steps per run: one number, or one per label budget (``{32: 800, 512: 3000}``).
        val_every_n_steps: validate every N steps and end each run with its best validation's weights (the task's
            main metric); None: the last weights, validated once at the end.
        patience: stop a run after this many validations without improvement (needs ``val_every_n_steps``).
        schedule: ``poly`` (decay to 0 over ``max_steps`` after a linear warm-up of a tenth of the steps) or
            ``plateau`` (constant after a 100-step warm-up; × 0.1 after ``plateau_patience`` validations without
            improvement; needs ``val_every_n_steps``: runs end on their validation plateau, ``max_steps`` is a cap).
        plateau_patience: ``plateau``: validations without improvement before the learning rate is lowered.
        min_delta: per task, the smallest change of the validation metric that counts as an improvement (early
            stopping and ``plateau``; e.g. ``{segmentation: 0.002, depth: 0.001}``); a task left out: 0.
        batch_size: images per step.
        lr: AdamW learning rate.
        grid_images: evaluation images shown in the prediction grids.
        keep_models: keep each variant's fine-tuned model (first seed, ``run/model``); otherwise only metrics, logs
            and the grid predictions stay.
        overrides: extra ``key=value`` overrides of every fine-tuning recipe (``predec.config.DenseConfig``).
    """

    tasks: list[str] = field(default_factory=lambda: ["segmentation"])
    variants: list[str] = field(
        default_factory=lambda: ["xnet_pt_dec", "xnet_rand_dec", "fpn_pt_enc", "fpn_decon_ml", "fpn_decon_sl",
                                 "fpn_slotcon"]
    )  # fmt: skip
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    reference_seeds: list[int] | None = None
    num_train: list[int] | int = field(default_factory=lambda: [256])
    extra_num_train: dict[str, list[int]] = field(default_factory=dict)
    num_val: int = 100
    num_test: int = 0
    image_size: list[int] = field(default_factory=lambda: [96, 96])
    scene_options: dict[str, Any] = field(default_factory=dict)
    max_steps: int | dict[int, int] = 200
    val_every_n_steps: int | None = None
    patience: int | None = None
    schedule: Literal["poly", "plateau"] = "poly"
    plateau_patience: int = 3
    min_delta: dict[str, float] = field(default_factory=dict)
    batch_size: int = 8
    lr: float = 1e-3
    grid_images: int = 4
    keep_models: bool = False
    overrides: list[str] = field(default_factory=list)

    def seeds_of(self, variant_name: str) -> list[int]:
        """The seeds ``variant_name`` is trained with."""
        if variant_name in DECISIVE_VARIANTS or self.reference_seeds is None:
            return list(self.seeds)
        return list(self.reference_seeds)

    def budgets_of(self, variant_name: str) -> list[int]:
        """The label budgets ``variant_name`` is trained with: ``num_train`` and its ``extra_num_train``."""
        return sorted({*self.num_train, *self.extra_num_train.get(variant_name, [])})

    def all_budgets(self) -> list[int]:
        """Every label budget any variant is trained with."""
        return sorted({n for name in self.variants for n in self.budgets_of(name)})

    def steps_of(self, num_train: int) -> int:
        """The optimiser steps of a run on ``num_train`` labelled scenes."""
        return self.max_steps if isinstance(self.max_steps, int) else int(self.max_steps[num_train])


@dataclass
class ProbeSettings:
    """The frozen-feature linear probe (:mod:`predec.engine.probe`): encoder and decoder of each variant as
    pre-trained (random parts random), frozen; a 1×1 classifier (segmentation) or linear depth head trained on the
    decoder's output features of ``num_train`` labelled scenes and scored on the test scenes (the validation scenes
    when ``finetune.num_test`` is 0).

    Attributes:
        variants: variants probed (empty: no probe).
        num_train: labelled scenes the probe is trained on.
        seeds: probe seeds (the random parts of the model, the probe's init and batch order).
        epochs: passes over the training features (AdamW, cosine decay).
        lr: the probe's learning rate.
    """

    variants: list[str] = field(default_factory=list)
    num_train: int = 512
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    epochs: int = 100
    lr: float = 1e-2


@dataclass
class DemoConfig:
    """Settings of ``predec demo``. The defaults are those of ``predec/configs/demo/full.yaml`` (tested).

    Attributes:
        name: ``quick``, ``full`` or ``benchmark`` (shown in the report).
        zoo: the pre-trained weights fine-tuned.
        data_seed: seed of the labelled, validation and test scenes.
        workers: stages run in parallel processes (1: in this process, with progress bars).
        threads_per_worker: torch threads of each worker.
        finetune: dense fine-tuning and evaluation.
        probe: the frozen-feature linear probe.
    """

    name: str = "full"
    zoo: ZooSettings = field(default_factory=ZooSettings)
    data_seed: int = 0
    workers: int = 2
    threads_per_worker: int = 1
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)
    probe: ProbeSettings = field(default_factory=ProbeSettings)


def config_path(name: str) -> Path:
    """The shipped demo settings ``predec/configs/demo/<name>.yaml``."""
    from predec.config import recipes_dir

    return recipes_dir() / "demo" / f"{name}.yaml"


def load_demo_config(source: str | Path, overrides: Sequence[str] = ()) -> DemoConfig:
    """Load demo settings (``quick``, ``full``, ``benchmark`` or a YAML file) with ``key=value`` overrides, validated.

    Raises:
        ConfigError: unknown keys, wrong types, unknown tasks or variants, no seeds or budgets.
    """
    path = Path(source)
    if not path.is_file():
        path = config_path(str(source))
        if not path.is_file():
            shipped = sorted(p.stem for p in config_path("x").parent.glob("*.yaml"))
            raise ConfigError(f"Demo settings {str(source)!r} not found; shipped: {', '.join(shipped)}, or a file.")
    config = load_config(path, overrides, schema=DemoConfig)
    ft = config.finetune
    if isinstance(ft.num_train, int):
        ft.num_train = [ft.num_train]
    for task in ft.tasks:
        if task not in TASKS:
            raise ConfigError(f"{path}: finetune.tasks holds {task!r}; valid tasks: {', '.join(TASKS)}.")
    for name in [*ft.variants, *config.probe.variants]:
        variant(name)
    for key in ("tasks", "variants", "seeds", "num_train"):
        if not getattr(ft, key):
            raise ConfigError(f"{path}: finetune.{key} is empty; give at least one.")
    if ft.reference_seeds is not None and not ft.reference_seeds:
        raise ConfigError(f"{path}: finetune.reference_seeds is empty; give at least one seed, or null (= seeds).")
    if any(n < 1 for n in ft.num_train) or len(set(ft.num_train)) != len(ft.num_train):
        raise ConfigError(f"{path}: finetune.num_train={ft.num_train}: need distinct label budgets >= 1.")
    for name, extra in ft.extra_num_train.items():  # a variant not in finetune.variants is not run: its extra too
        variant(name)
        if not isinstance(extra, list) or not all(isinstance(n, int) and n >= 1 for n in extra):
            raise ConfigError(
                f"{path}: finetune.extra_num_train={ft.extra_num_train}: give {{variant: [label budgets >= 1]}}."
            )
    if isinstance(ft.max_steps, dict):
        steps = {int(k): v for k, v in ft.max_steps.items()} if all(str(k).isdigit() for k in ft.max_steps) else {}
        budgets = ft.all_budgets()
        if not set(budgets) <= set(steps) or not all(isinstance(v, int) and v >= 1 for v in steps.values()):
            raise ConfigError(
                f"{path}: finetune.max_steps={ft.max_steps}: give one number of steps >= 1, or one per label budget "
                f"of finetune.num_train={ft.num_train} and extra_num_train (e.g. {dict.fromkeys(budgets, 1000)})."
            )
        ft.max_steps = steps
    elif ft.max_steps < 1:
        raise ConfigError(f"{path}: finetune.max_steps={ft.max_steps}: need >= 1.")
    for key, chosen in (("patience", ft.patience is not None), ("schedule=plateau", ft.schedule == "plateau")):
        if chosen and ft.val_every_n_steps is None:
            raise ConfigError(f"{path}: finetune.{key} needs finetune.val_every_n_steps (how often to validate).")
    unknown = sorted(set(ft.min_delta) - set(TASKS))
    if unknown or any(not isinstance(v, (int, float)) or v < 0 for v in ft.min_delta.values()):
        raise ConfigError(
            f"{path}: finetune.min_delta={ft.min_delta}: give a number >= 0 per task ({', '.join(TASKS)})."
        )
    if config.probe.variants and not config.probe.seeds:
        raise ConfigError(f"{path}: probe.seeds is empty; give at least one.")
    size = list(ft.image_size)
    if len(size) != 2 or any(int(v) < IMAGE_DIVISOR or int(v) % IMAGE_DIVISOR for v in size):
        down = [max(IMAGE_DIVISOR, int(v) // IMAGE_DIVISOR * IMAGE_DIVISOR) for v in size]
        up = [-(-max(int(v), 1) // IMAGE_DIVISOR) * IMAGE_DIVISOR for v in size]
        raise ConfigError(
            f"{path}: finetune.image_size={size}: every model of the demo has output stride {IMAGE_DIVISOR}, so "
            f"height and width must be multiples of {IMAGE_DIVISOR} (e.g. {down} or {up})."
        )
    if config.workers < 1 or config.threads_per_worker < 1:
        raise ConfigError(
            f"{path}: workers={config.workers}, threads_per_worker={config.threads_per_worker}: need >= 1."
        )
    return config


def stage_budget_name(num_train: int) -> str:
    """The label-budget part of a fine-tuning stage name (``n256``)."""
    return f"n{num_train}"


def finetune_stage_name(task: str, variant_name: str, num_train: int, seed: int) -> str:
    """``finetune/<task>/<variant>/n<labels>/seed<k>``."""
    return f"finetune/{task}/{variant_name}/{stage_budget_name(num_train)}/seed{seed}"


def probe_stage_name(task: str, variant_name: str, num_train: int, seed: int) -> str:
    """``probe/<task>/<variant>/n<labels>/seed<k>``."""
    return f"probe/{task}/{variant_name}/{stage_budget_name(num_train)}/seed{seed}"


def zoo_stage_name(entry: str) -> str:
    """``zoo/<entry>``: the stage rebuilding a zoo entry (``--from-scratch``)."""
    return f"zoo/{entry}"


def plain(value: Any) -> Any:
    """``value`` as plain JSON data (for stage specs and fingerprints)."""
    import json

    return json.loads(json.dumps(value))
