"""One weight resolver for encoders, decoders and whole models.

A *weight spec* is one of:

- ``None`` (or ``False``): keep the random initialisation.
- ``True`` or ``"pretrained"``: timm's default pretrained weights of the backbone (its name may carry a tag,
  ``"convnext_atto.d2_in1k"``), fetched by timm from the Hugging Face Hub or read from its cache.
- a timm name with tag (``"convnext_atto.d2_in1k"``) or without (default tag): those timm weights.
- a local file ``.safetensors`` / ``.pth`` / ``.pt`` / ``.bin`` / ``.ckpt`` holding a state dict, at the top level or
  under ``"state_dict"`` or ``"model"`` (``"module."`` prefixes of DDP are stripped). Accepted layouts:
  a timm classification model (``conv1.weight``, loaded into the backbone, classifier dropped), the target module's
  own state dict (``model.conv1.weight`` for an encoder), a whole ``DenseModel`` state dict (``encoder.*``,
  ``decoder.*``, ``head.*``: the matching part is taken), or a predec pre-training checkpoint (``teacher.encoder.*``,
  ``teacher.decoder.*``, ``student.*``): the **teacher** part is taken; append ``#student`` to the path
  (``"run/last.ckpt#student"``) for the student (``#teacher`` is the explicit default).
- ``"hf-hub:org/repo"`` (optionally ``"hf-hub:org/repo/file.safetensors"``): the repo's ``model.safetensors``
  (else ``pytorch_model.bin``), then as a local file.
- ``"predec:NAME"``: an entry of predec's own model zoo (``predec zoo list``), shipped with the package; its file is
  checked against the sha256 of its manifest before loading (:mod:`predec.zoo.registry`).

Loading is safe only: safetensors, or ``torch.load(weights_only=True)``. Nothing touches the network for a local
file, and under ``HF_HUB_OFFLINE=1`` only the local caches are read. Every load returns a :class:`WeightsReport`
(also logged) naming missing, unexpected and shape-mismatched keys; ``strict=True`` (the default) raises on any of
them. Keys a timm classification checkpoint has but a feature backbone lacks (classifier, final norm, pruned
stages) are dropped silently, and an input convolution trained on 3 channels is adapted to ``in_chans`` with
``timm.models.adapt_input_conv``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import safetensors.torch
import timm
import torch
from torch import Tensor, nn

from predec.atomic import atomic_path
from predec.models.encoders import TimmBackbone
from predec.zoo.registry import ZOO_PREFIX, find_entry

logger = logging.getLogger(__name__)

WeightSpec = bool | str | os.PathLike | None
"""A weight spec: see the module docstring."""

FILE_SUFFIXES: tuple[str, ...] = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
PARTS: tuple[str, ...] = ("encoder", "decoder", "model")
SOURCES: tuple[str, ...] = ("teacher", "student")
HUB_PREFIX = "hf-hub:"
HUB_FILES: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin")
_SHOW = 10  # how many keys an error message lists per category


@dataclass
class WeightsReport:
    """What a weight load did.

    Attributes:
        source: the weight spec as given (file, tag, hub id).
        target: the module the weights went into (``"encoder.model (timm resnet18)"``).
        loaded: target keys that received a tensor.
        missing: target keys the weights did not provide.
        unexpected: weight keys the target does not have (not counting the expected drops).
        mismatched: ``(key, shape in weights, shape in target)`` for keys present in both with different shapes.
        dropped: weight keys ignored on purpose (timm classifier / final norm / pruned stages).
        adapted: input convolutions adapted to the target's input channels.
    """

    source: str
    target: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every target key was loaded and nothing unexpected or mismatched was found."""
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self) -> str:
        """A multi-line, human-readable account naming the first problem keys of each kind."""
        lines = [
            f"{self.target} <- {self.source}: loaded {len(self.loaded)} tensors, {len(self.missing)} missing, "
            f"{len(self.unexpected)} unexpected, {len(self.mismatched)} shape-mismatched, "
            f"{len(self.dropped)} dropped (classifier/pruned)"
            + (f", adapted to in_chans: {', '.join(self.adapted)}" if self.adapted else "")
        ]
        if self.mismatched:
            shown = [f"{k} (weights {tuple(a)} vs model {tuple(b)})" for k, a, b in self.mismatched[:_SHOW]]
            lines.append("  shape-mismatched: " + "; ".join(shown) + _more(self.mismatched))
        if self.missing:
            lines.append("  missing: " + ", ".join(self.missing[:_SHOW]) + _more(self.missing))
        if self.unexpected:
            lines.append("  unexpected: " + ", ".join(self.unexpected[:_SHOW]) + _more(self.unexpected))
        return "\n".join(lines)


def _more(items: list) -> str:
    return f" ... (+{len(items) - _SHOW} more)" if len(items) > _SHOW else ""


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the Hugging Face Hub's endpoint opens within ``timeout`` seconds (huggingface_hub
    itself retries an unreachable host for about a minute before it gives up)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    endpoint = urlparse(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname or "huggingface.co", port), timeout=timeout).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def hub_offline_mode() -> Iterator[None]:
    """huggingface_hub in offline mode for the block (its local cache only), as ``HF_HUB_OFFLINE=1`` would have set
    it at import."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` is set (read from the environment now and from huggingface_hub's constants)."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
    return env or bool(constants.HF_HUB_OFFLINE)


# ----------------------------------------------------------------------------------------------------------------
# Reading state dicts


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a state dict from a local file, safely.

    ``.safetensors`` through safetensors; ``.pth``/``.pt``/``.bin``/``.ckpt`` through
    ``torch.load(weights_only=True)``. A state dict under ``"state_dict"`` or ``"model"`` is unwrapped, and a
    ``"module."`` prefix on every key (DDP) is stripped.

    Args:
        path: the file.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unknown suffix, unreadable/corrupt file, or no tensors inside (the message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Weights file {str(path)!r} does not exist.")
    if path.suffix not in FILE_SUFFIXES:
        raise ValueError(
            f"Weights file {str(path)!r} has suffix {path.suffix!r}; supported: {', '.join(FILE_SUFFIXES)}."
        )
    try:
        if path.suffix == ".safetensors":
            obj = safetensors.torch.load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"Cannot read weights file {str(path)!r} ({type(err).__name__}: {err}). It is corrupt, truncated, or "
            "holds pickled objects that torch.load(weights_only=True) refuses for safety; re-save it as a plain "
            "state dict, preferably with safetensors.torch.save_file."
        ) from err
    state = _unwrap(obj)
    if state is None:
        found = sorted(obj)[:_SHOW] if isinstance(obj, Mapping) else type(obj).__name__
        raise ValueError(
            f"Weights file {str(path)!r} holds no state dict (a mapping of names to tensors at the top level or under "
            f"'state_dict' / 'model'); found: {found}."
        )
    return state


def save_state_dict(state: Mapping[str, Tensor], path: str | os.PathLike) -> Path:
    """Write ``state`` as a ``.safetensors`` file atomically (contiguous CPU copies), the reverse of
    :func:`read_state_dict`."""
    with atomic_path(path) as tmp:
        safetensors.torch.save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp))
    return Path(path)


def _unwrap(obj: object) -> dict[str, Tensor] | None:
    """The tensor mapping inside a loaded checkpoint, or None if there is none."""
    if not isinstance(obj, Mapping):
        return None
    for wrapper in ("state_dict", "model"):
        inner = obj.get(wrapper)
        if isinstance(inner, Mapping) and inner:
            return _unwrap(inner)
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        return None
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


def _hub_error_hint(what: str, part: str) -> str:
    example = f"{part}_weights='/path/to/model.safetensors'" if part != "model" else "spec='/path/to/model.safetensors'"
    return (
        f"To load without network access, download {what} on a machine that has it and pass the local file "
        f"instead, e.g. {example}."
    )


def _hub_state_dict(spec: str, part: str) -> dict[str, Tensor]:
    """Download (or read from the Hugging Face cache) the weights of ``hf-hub:org/repo[/file]``."""
    from huggingface_hub import hf_hub_download

    rest = spec[len(HUB_PREFIX) :].strip("/")
    parts = rest.split("/")
    if len(parts) < 2 or not all(parts[:2]):
        raise ValueError(f"Hub weight spec {spec!r} must read 'hf-hub:org/repo' or 'hf-hub:org/repo/file'.")
    repo_id, filenames = "/".join(parts[:2]), ["/".join(parts[2:])] if len(parts) > 2 else list(HUB_FILES)
    errors = []
    unreachable = not hub_offline() and not hub_reachable()
    for filename in filenames:
        try:
            with hub_offline_mode() if unreachable else contextlib.nullcontext():
                local = hf_hub_download(repo_id=repo_id, filename=filename)
        except Exception as err:  # the hub raises many error types; all mean "not available here"
            errors.append(f"{filename}: {type(err).__name__}: {str(err).strip().rstrip('.')}")
            continue
        return read_state_dict(local)
    offline = " (HF_HUB_OFFLINE is set: only the local cache was searched)" if hub_offline() else ""
    if unreachable:
        offline = " (the Hub is unreachable from this machine: only the local cache was searched)"
    raise RuntimeError(
        f"Cannot fetch {spec!r}{offline}: "
        + " | ".join(errors)
        + ". "
        + _hub_error_hint(f"the files of {repo_id}", part)
    )


def _timm_state_dict(tag: str, part: str) -> dict[str, Tensor]:
    """The state dict of timm's pretrained classification model ``tag`` (``arch`` or ``arch.tag``).

    timm fetches it (Hugging Face Hub, honouring ``HF_HUB_OFFLINE``) and converts original checkpoints to timm's
    layout. It keeps its native input channels: ``load_weights`` adapts them like those of a file.
    """
    arch = tag.split(".", 1)[0]
    try:
        cfg = timm.models.get_pretrained_cfg(tag, allow_unregistered=False)
    except Exception:
        cfg = None
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        options = timm.list_pretrained(f"{arch}.*") or timm.list_pretrained(f"{arch}*")
        hint = f" Pretrained tags of {arch!r}: {', '.join(options[:_SHOW])}." if options else ""
        raise ValueError(f"timm has no pretrained weights {tag!r}.{hint}")
    if hub_offline() and not cfg.hf_hub_id:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(cfg.url or "").name
        if not cached.is_file():
            raise RuntimeError(
                f"timm weights {tag!r} are only available from {cfg.url}, HF_HUB_OFFLINE is set and they are not in "
                f"the torch hub cache ({cached}). " + _hub_error_hint(cfg.url or tag, part)
            )
    unreachable = bool(cfg.hf_hub_id) and not hub_offline() and not hub_reachable()
    try:
        with hub_offline_mode() if unreachable else contextlib.nullcontext():  # the cache, not a minute of retries
            full = timm.create_model(tag, pretrained=True)
    except Exception as err:
        where = cfg.hf_hub_id or cfg.url
        offline = " (HF_HUB_OFFLINE is set: only the local cache was searched)" if hub_offline() else ""
        if unreachable:
            offline = " (the Hub is unreachable from this machine: only the local cache was searched)"
        raise RuntimeError(
            f"Cannot fetch timm weights {tag!r} from {where}{offline}: {type(err).__name__}: "
            f"{str(err).strip().rstrip('.')}. " + _hub_error_hint(f"'{where}'", part)
        ) from err
    return full.state_dict()


# ----------------------------------------------------------------------------------------------------------------
# Matching a state dict to a module


@dataclass
class _Target:
    """A module that can receive weights, with the key prefix a whole-file layout puts in front of its keys."""

    name: str
    module: nn.Module
    backbone: TimmBackbone | None = None  # set when ``module`` is (or contains, at ``key_prefix``) a timm backbone
    key_prefix: str = ""  # where the backbone's timm keys start inside ``module``'s keys

    def droppable(self) -> set[str]:
        if self.backbone is None:
            return set()
        return {self.key_prefix + k for k in self.backbone.pruned_keys()}

    def first_conv_keys(self) -> list[str]:
        if self.backbone is None:
            return []
        return [self.key_prefix + k for k in self.backbone.first_conv_keys]

    def adapts_own_stem(self) -> bool:
        """Whether the backbone registered its own load-time hook (e.g. ×Net's zero-padded stem for concat mixing);
        then a 3-channel stem weight is handed to it unchanged instead of being adapted here."""
        return self.backbone is not None and bool(self.backbone.model._load_state_dict_pre_hooks)


def _targets(module: nn.Module, part: str) -> list[_Target]:
    """The modules a state dict may be meant for, for ``part`` of a model."""
    if part == "encoder":
        if not isinstance(module, TimmBackbone):
            raise TypeError(f"part='encoder' expects a TimmBackbone, got {type(module).__name__}.")
        return [
            _Target(f"encoder ({module.name})", module, module, "model."),
            _Target(f"encoder.model (timm {module.name})", module.model, module, ""),
        ]
    if part == "decoder":
        targets = [_Target(f"decoder ({type(module).__name__})", module)]
        backbone = getattr(module, "backbone", None)
        if isinstance(backbone, TimmBackbone):
            targets[0] = _Target(targets[0].name, module, backbone, "backbone.model.")
            targets.append(_Target(f"decoder.backbone.model (timm {backbone.name})", backbone.model, backbone, ""))
        return targets
    if part == "model":
        return [_Target(f"model ({type(module).__name__})", module)]
    raise ValueError(f"Unknown part {part!r}; valid parts: {', '.join(PARTS)}.")


def _timm_backbone(module: nn.Module, part: str) -> TimmBackbone:
    """The timm backbone that timm-hosted weights go into, or an error saying why there is none."""
    if part == "encoder" and isinstance(module, TimmBackbone):
        return module
    backbone = getattr(module, "backbone", None)
    if part == "decoder" and isinstance(backbone, TimmBackbone):
        return backbone
    raise ValueError(
        f"timm pretrained weights need a timm backbone, but the {part} ({type(module).__name__}) has none: only "
        "encoders and the ×Net decoder are timm models. Pass a file or a predec checkpoint instead."
    )


def _select(
    state: dict[str, Tensor], module: nn.Module, part: str, source: str | None, origin: str
) -> tuple[_Target, dict[str, Tensor]]:
    """Pick the (target, sub-state-dict) pair whose keys overlap most.

    File layouts tried: pre-training checkpoint (``<source>.<part>.``), whole model (``<part>.``), plain (no prefix);
    targets: the module itself and, for timm backbones, the inner timm model.
    """
    if source is not None and not any(k.startswith(f"{source}.") for k in state):
        prefixes = sorted({k.split(".", 1)[0] for k in state})[:_SHOW]
        raise ValueError(
            f"{origin} was requested with '#{source}', but it holds no '{source}.*' keys (top-level names: {prefixes})."
        )
    source = source or "teacher"
    prefixes = [f"{source}.{part}.", f"{part}.", ""] if part != "model" else [""]
    best: tuple[int, _Target, dict[str, Tensor]] | None = None
    for prefix in prefixes:
        sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        for target in _targets(module, part):
            score = len(sub.keys() & target.module.state_dict().keys())
            if best is None or score > best[0]:
                best = (score, target, sub)
    assert best is not None
    score, target, sub = best
    if score == 0:
        wanted = list(_targets(module, part)[-1].module.state_dict())[:3]
        layouts = (
            f"or with a '{source}.{part}.' / '{part}.' prefix"
            if part != "model"
            else "a pre-training checkpoint goes in as encoder_weights= / decoder_weights="
        )
        raise ValueError(
            f"No key of {origin} matches the {part}: its keys look like {sorted(state)[:3]}, the {part} expects keys "
            f"like {wanted} ({layouts}). Is it a checkpoint of another model?"
        )
    return target, sub


def _compare(state: dict[str, Tensor], target: _Target, origin: str) -> tuple[dict[str, Tensor], WeightsReport]:
    """Match ``state`` against ``target``'s state dict: returns the tensors to load and the report."""
    expected = target.module.state_dict()
    report = WeightsReport(source=origin, target=target.name)
    droppable = target.droppable() if (state.keys() - expected.keys()) else set()
    first_convs = set(target.first_conv_keys())
    to_load: dict[str, Tensor] = {}
    for key, value in state.items():
        if key not in expected:
            (report.dropped if key in droppable else report.unexpected).append(key)
            continue
        want = expected[key].shape
        if value.shape != want and key in first_convs and value.ndim == 4 and value.shape[0] == want[0]:
            report.adapted.append(key)
            if target.adapts_own_stem():
                to_load[key] = value
                report.loaded.append(key)
                continue
            value = timm.models.adapt_input_conv(int(want[1]), value.float(), base_chans=int(value.shape[1]))
        if value.shape != want:
            report.mismatched.append((key, tuple(value.shape), tuple(want)))
            continue
        to_load[key] = value
        report.loaded.append(key)
    # BatchNorm's counter is absent from some older timm checkpoints; it is a statistic, not a weight.
    report.missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    return to_load, report


def load_weights(module: nn.Module, spec: WeightSpec, *, part: str, strict: bool = True) -> WeightsReport | None:
    """Load the weights named by ``spec`` into ``module`` (an encoder, a decoder, or a whole model).

    Args:
        module: a ``TimmBackbone`` (``part="encoder"``), a decoder (``part="decoder"``; the ×Net decoder's
            ``.backbone`` receives timm-style weights), or a ``DenseModel`` (``part="model"``).
        spec: a weight spec (module docstring). ``None`` does nothing.
        part: ``"encoder"``, ``"decoder"`` or ``"model"``; chooses the part of a whole-model or pre-training
            checkpoint.
        strict: raise ``ValueError`` listing the keys if any are missing, unexpected or shape-mismatched; when
            False, load the matching tensors and log a warning instead.

    Returns:
        The report (also logged), or None when ``spec`` is None.
    """
    if part not in PARTS:
        raise ValueError(f"Unknown part {part!r}; valid parts: {', '.join(PARTS)}.")
    if spec is None or spec is False:
        return None
    source: str | None = None
    fits = ""  # what a zoo entry was trained for, added to a mismatch error
    if spec is True or spec == "pretrained":
        backbone = _timm_backbone(module, part)
        origin = f"timm pretrained {backbone.name}"
        state = _timm_state_dict(backbone.name, part)
    elif isinstance(spec, (str, os.PathLike)):
        text = os.fspath(spec)
        base, _, suffix = text.rpartition("#")
        if base and suffix in SOURCES:
            text, source = base, suffix
        origin = text + (f"#{source}" if source else "")
        if text.startswith(HUB_PREFIX):
            state = _hub_state_dict(text, part)
        elif text.startswith(ZOO_PREFIX):
            if source is not None:
                raise ValueError(f"'#{source}' applies to predec checkpoint files, not to zoo entry {text!r}.")
            entry = find_entry(text)
            state, fits = read_state_dict(entry.verify()), f"\nThe {entry.fits()}."
        elif Path(text).is_file() or Path(text).suffix in FILE_SUFFIXES or os.sep in text or "/" in text:
            state = read_state_dict(text)
        elif timm.is_model(text.split(".", 1)[0]):
            if source is not None:
                raise ValueError(f"'#{source}' applies to predec checkpoint files, not to timm weights {text!r}.")
            _timm_backbone(module, part)  # raises if there is no timm backbone to load into
            origin = f"timm pretrained {text}"
            state = _timm_state_dict(text, part)
        else:
            raise ValueError(
                f"Cannot interpret weight spec {text!r}: it is not an existing file, not a timm model name/tag, and "
                "not 'hf-hub:org/repo' nor 'predec:<zoo entry>'. Valid specs: None, True/'pretrained', a timm tag "
                f"('convnext_atto.d2_in1k'), a file ({', '.join(FILE_SUFFIXES)}; add '#student' for a pre-training "
                "checkpoint's student), 'hf-hub:org/repo', 'predec:NAME' (predec zoo list)."
            )
    else:
        raise TypeError(f"A weight spec is None, True, a string or a path; got {type(spec).__name__}: {spec!r}.")

    hint = fits or (
        "\nCheck that they belong to this architecture/backbone, or load them with strict=False through "
        "predec.models.load_weights(..., strict=False) to keep the matching tensors."
    )
    return load_state(module, state, part=part, origin=origin, source=source, strict=strict, hint=hint)


def load_state(
    module: nn.Module,
    state: dict[str, Tensor],
    *,
    part: str,
    origin: str,
    source: str | None = None,
    strict: bool = True,
    hint: str = "",
) -> WeightsReport:
    """Load a state dict already in memory into ``module``, as :func:`load_weights` does after reading its spec.

    Args:
        module: as in :func:`load_weights`.
        state: the tensors (a whole-model, part or pre-training state dict; the part is selected by key prefix).
        part: ``"encoder"``, ``"decoder"`` or ``"model"``.
        origin: where ``state`` comes from, named in the report and errors.
        source: ``student``/``teacher`` of a pre-training checkpoint, if chosen.
        strict: raise ``ValueError`` naming the keys on any mismatch (else load what fits and warn).
        hint: text appended to a strict mismatch error (what would be right).

    Returns:
        The report (also logged).
    """
    target, sub = _select(state, module, part, source, origin)
    to_load, report = _compare(sub, target, origin)
    if not report.ok:
        if strict:
            raise ValueError(f"Weights {origin!r} do not fit the {part}:\n{report.summary()}{hint}")
        logger.warning(report.summary())
    else:  # the parts a recipe's weight specs fill are news; a whole saved model reloaded is not
        logger.log(logging.DEBUG if part == "model" else logging.INFO, report.summary())
    target.module.load_state_dict(to_load, strict=False)
    return report
