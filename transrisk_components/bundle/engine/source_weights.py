"""Source-weight transfer into the target network when fine-tuning starts.

:class:`SourceWeights` is the fine-tuning trainer's first handler: at ``Events.STARTED`` it copies the source
checkpoint's weights into the target network wherever shapes allow (the rules of
:mod:`~transrisk_components.bundle.engine.source_model`), optionally sets the output head from the source's through
the risk stage's ``P(z | y)`` (``head_init leep``), re-initialises the classes the source gives no information about
(``risk#dead_classes reinit``) and freezes everything but the head for the first epochs (``freeze_epochs``). What the
risk stage found is read from its manifest (:class:`~transrisk_components.bundle.io.risk_manifest.RiskManifest`).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from ignite.engine import Engine, Events
from torch import nn

from transrisk_components.bundle.engine.source_model import HEAD_INITS, carry_over, leep_output_layer, read_source_state
from transrisk_components.bundle.io.risk_manifest import RiskManifest
from transrisk_components.utils.distributed import is_distributed

__all__ = ["SourceWeights", "load_source_weights", "output_layer", "reinit_output_channels"]

logger = logging.getLogger(__name__)


def load_source_weights(
    network: nn.Module,
    ckpt_path: str | Path,
    source_classes: int,
    target_classes: int,
    source_channels: Sequence[str] = (),
    target_channels: Sequence[str] = (),
    key_in_ckpt: str | None = None,
) -> nn.Module:
    """Copy source weights into ``network`` wherever shapes allow: the input layer adapted when the input channels
    differ, the output head re-initialised when the class counts differ (the rules of
    :mod:`transrisk_components.bundle.engine.source_model`).

    Args:
        network: target network (already built with ``target_classes`` outputs and ``len(target_channels)`` inputs).
        ckpt_path: source checkpoint: a ``state_dict``, a dict holding one (``key_in_ckpt``; ``"model"`` by default)
            or a TorchScript file (see :func:`~transrisk_components.bundle.engine.source_model.read_source_state`).
        source_classes: output channels of the source network.
        target_classes: output classes of ``network``.
        source_channels: the modalities of the source's input channels, in order (``()``: as many as the target's).
        target_channels: the modalities of ``network``'s input channels, in order.
        key_in_ckpt: the checkpoint entry holding the ``state_dict``.

    Returns:
        ``network`` with the source weights loaded.

    Raises:
        FileNotFoundError: no file at ``ckpt_path``.
        ValueError: the checkpoint does not fit ``network``; the message names the first layer that does not fit, its
            shapes and the remedy. The checkpoint is only read.
    """
    state = read_source_state(ckpt_path, key_in_ckpt)
    changed = carry_over(network, state, source_classes, target_classes, source_channels, target_channels, ckpt_path)
    if changed["input"]:
        logger.info(
            "source reads %s, target %s: input layer %s adapted (filters of shared modalities kept, the others the "
            "mean of the source's, scaled by %d/%d)",
            list(source_channels),
            list(target_channels),
            ", ".join(changed["input"]),
            len(source_channels),
            len(target_channels),
        )
    if changed["head"]:
        logger.info(
            "source has %d classes, target %d: output head re-initialised (%s); other weights from %s",
            source_classes,
            target_classes,
            ", ".join(changed["head"]),
            ckpt_path,
        )
    else:
        logger.info("target network initialised from source checkpoint %s", ckpt_path)
    return network


def output_layer(network: nn.Module, num_classes: int) -> tuple[str, nn.Module]:
    """The network's output layer: the last convolution (transposed too) or linear layer with ``num_classes``
    outputs, and its name.

    Raises:
        ValueError: no such layer.
    """
    found: tuple[str, nn.Module] | None = None
    for name, module in network.named_modules():
        if isinstance(module, nn.modules.conv._ConvNd) and module.out_channels == num_classes:
            found = (name, module)
        elif isinstance(module, nn.Linear) and module.out_features == num_classes:
            found = (name, module)
    if found is None:
        raise ValueError(f"{type(network).__name__} has no convolution or linear layer with {num_classes} outputs")
    return found


@torch.no_grad()
def reinit_output_channels(network: nn.Module, channels: Sequence[int], num_classes: int) -> str:
    """Re-initialise the output channels ``channels`` of ``network``'s output layer, keeping every other weight.

    The new values come from the layer's own ``reset_parameters`` (PyTorch's default initialisation, drawn from
    the global torch generator, so the run's seed fixes them).

    Args:
        network: the target network (its output layer has ``num_classes`` outputs, see :func:`output_layer`).
        channels: output channels (target class indices) to re-initialise.
        num_classes: the network's number of output classes.

    Returns:
        The output layer's name.
    """
    name, layer = output_layer(network, num_classes)
    if not channels:
        return name
    bad = [c for c in channels if not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"output channels {bad} outside [0, {num_classes})")
    fresh = copy.deepcopy(layer)
    fresh.reset_parameters()
    index = torch.as_tensor(list(channels), dtype=torch.long, device=layer.weight.device)
    out_dim = 1 if isinstance(layer, nn.modules.conv._ConvTransposeNd) else 0
    if out_dim == 1 and layer.groups != 1:
        raise ValueError(f"output layer {name} is a grouped transposed convolution: its channels cannot be re-initialised")
    layer.weight.index_copy_(out_dim, index, fresh.weight.index_select(out_dim, index))
    if layer.bias is not None:
        layer.bias.index_copy_(0, index, fresh.bias.index_select(0, index))
    return name


class SourceWeights:
    """Ignite handler: initialise the target network from the source checkpoint when the trainer starts.

    Loading at ``Events.STARTED`` rather than when the config is parsed keeps the trainer constructible before
    the source stage has run (MONAI's ``check_properties`` builds it on a fresh clone). Attach it before any
    resume loader, which then overwrites these weights with the resumed ones.

    Args:
        network: the target network (the module itself, not a DDP wrapper).
        init: ``"source"`` (transfer; see :func:`load_source_weights`) or ``"random"`` (no-transfer baseline:
            nothing is loaded).
        ckpt_path: the source checkpoint.
        source_classes: output classes of the source network.
        target_classes: output classes of ``network``.
        dead_classes: what to do about target classes the source gives no information about (``risk#dead_classes``):
            ``"warn"`` (default: nothing here, the risk stage warns), ``"reinit"`` (re-initialise those classes'
            output channels after loading the source weights), ``"scratch"`` (random initialisation, as
            ``init="random"``, when no foreground class transfers; the source weights otherwise).
        risk_manifest: the risk stage's ``manifest.json`` (the run's ``risk_manifest``), which tells the dead classes
            and holds the pooled ``P(y, z)``; needed when ``dead_classes`` acts or ``head_init="leep"``.
        dead_class_margin: information below which a class is dead (``risk#dead_class_margin``).
        source_channels: the modalities of the source's input channels, in order (``source_modality``; ``()``: as
            many as the target's).
        target_channels: the modalities of ``network``'s input channels (``target_modality``).
        key_in_ckpt: the checkpoint entry holding the source ``state_dict`` (``None``: the file is one).
        freeze_epochs: for this many epochs only the output layer trains, every other weight carried over from the
            source is frozen (the head first fits the target, then everything is fine-tuned); ``0`` (default) trains
            everything from the first epoch. Nothing is frozen when the network does not start from the source.
        head_init: how the output layer starts when the network starts from the source (``head_init``,
            :data:`~transrisk_components.bundle.engine.source_model.HEAD_INITS`): ``"random"`` (default: the carry-over
            rules, the head re-initialised when the class counts differ) or ``"leep"``: target class ``y``'s output
            unit is the ``P(z | y)``-weighted mean of the source's units, ``P(y, z)`` the risk stage's pooled joint
            over the target training cases (:func:`~transrisk_components.bundle.engine.source_model.leep_output_layer`; a
            copy or permutation of the source's units when ``z -> y`` is one-to-one). Applied before
            ``dead_classes reinit``, which then re-initialises the dead classes' units.
        source_output: the source's output semantics (``source_output``); ``head_init="leep"`` needs ``"softmax"``.

    Raises:
        ValueError: unknown ``init``, ``dead_classes`` or ``head_init``, an action or ``head_init="leep"`` without a
            risk stage, or ``head_init="leep"`` with a sigmoid source (at construction).
    """

    def __init__(
        self,
        network: nn.Module,
        init: str,
        ckpt_path: str | Path,
        source_classes: int,
        target_classes: int,
        dead_classes: str = "warn",
        risk_manifest: str | Path | None = None,
        dead_class_margin: float = 0.05,
        source_channels: Sequence[str] = (),
        target_channels: Sequence[str] = (),
        key_in_ckpt: str | None = None,
        freeze_epochs: int = 0,
        head_init: str = "random",
        source_output: str = "softmax",
    ) -> None:
        if init not in ("source", "random"):
            raise ValueError(f"unknown target init {init!r}; choose 'source' or 'random'")
        if dead_classes not in ("warn", "reinit", "scratch"):
            raise ValueError(f"unknown risk#dead_classes {dead_classes!r}; choose 'warn', 'reinit' or 'scratch'")
        if dead_classes != "warn" and init == "source" and risk_manifest is None:
            raise ValueError(f"risk#dead_classes {dead_classes!r} needs the risk stage to tell the dead classes")
        if head_init not in HEAD_INITS:
            raise ValueError(f"unknown head_init {head_init!r}; choose one of {HEAD_INITS}")
        if head_init == "leep" and init == "source" and risk_manifest is None:
            raise ValueError("head_init 'leep' needs the risk stage: its pooled P(y, z) mixes the source's output units")
        if head_init == "leep" and source_output != "softmax":
            raise ValueError(
                f"head_init 'leep' needs a softmax source, but source_output is {source_output!r}: a sigmoid source's "
                "LEEP states z are the 2^k on/off combinations of its k channels, and its head has one unit per "
                "channel, not per state, so there is no source unit to weight by P(z | y); use head_init random"
            )
        self.network = network
        self.init = init
        self.ckpt_path = ckpt_path
        self.source_classes = source_classes
        self.target_classes = target_classes
        self.dead_classes = dead_classes
        self.manifest = None if risk_manifest is None else RiskManifest(risk_manifest)
        self.dead_class_margin = float(dead_class_margin)
        self.source_channels = tuple(source_channels)
        self.target_channels = tuple(target_channels)
        self.key_in_ckpt = key_in_ckpt
        self.head_init = head_init
        if int(freeze_epochs) < 0:
            raise ValueError(f"freeze_epochs must be >= 0, got {freeze_epochs}")
        self.freeze_epochs = int(freeze_epochs)
        self._frozen: list[nn.Parameter] = []

    def attach(self, engine: Engine) -> None:
        """Load the source weights as ``engine`` starts."""
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        if self.init == "random":
            logger.info("target network starts from random initialisation (no-transfer baseline)")
            return
        if self.dead_classes == "scratch" and not self.manifest.foreground_transfers(self.dead_class_margin):
            logger.warning(
                "risk#dead_classes scratch: no foreground class gets information from the source (dead: %s): the "
                "target network starts from random initialisation instead of %s",
                ", ".join(self.manifest.dead_class_names(self.dead_class_margin)),
                self.ckpt_path,
            )
            return
        load_source_weights(
            self.network,
            self.ckpt_path,
            self.source_classes,
            self.target_classes,
            self.source_channels,
            self.target_channels,
            self.key_in_ckpt,
        )
        if self.head_init == "leep":
            self._leep_head()
        if self.freeze_epochs:
            self._freeze(engine)
        if self.dead_classes == "reinit":
            channels = self.manifest.dead_class_indices(self.dead_class_margin)
            if channels:
                layer = reinit_output_channels(self.network, channels, self.target_classes)
                logger.warning(
                    "risk#dead_classes reinit: output channels %s (%s) of layer %s re-initialised: the source gives "
                    "no information about them",
                    channels,
                    ", ".join(self.manifest.dead_class_names(self.dead_class_margin)),
                    layer,
                )
            else:
                logger.info("risk#dead_classes reinit: no dead class, every source weight kept")

    def _leep_head(self) -> None:
        """Set the output layer from the source's through the risk stage's ``P(y, z)`` (``head_init leep``)."""
        name, layer = output_layer(self.network, self.target_classes)
        state = read_source_state(self.ckpt_path, self.key_in_ckpt)
        leep_output_layer(layer, name, state, self.manifest.joint(), self.ckpt_path)
        logger.info(
            "head_init leep: output layer %s set from the source's %d class units through P(z | y) of the target "
            "training cases",
            name,
            self.source_classes,
        )

    def _freeze(self, engine: Engine) -> None:
        """Freeze every parameter but the output head's until ``freeze_epochs`` epochs are done."""
        if is_distributed():
            raise ValueError(
                "freeze_epochs needs one process: DistributedDataParallel cannot train a network whose frozen weights "
                "change during the run; run without multi_gpu_train.json, or with freeze_epochs 0"
            )
        head, _ = output_layer(self.network, self.target_classes)
        self._frozen = [p for n, p in self.network.named_parameters() if not n.startswith(f"{head}.") and p.requires_grad]
        for parameter in self._frozen:
            parameter.requires_grad_(False)
        logger.info(
            "transfer weights frozen for the first %d epochs: only the output layer %s trains", self.freeze_epochs, head
        )
        engine.add_event_handler(Events.EPOCH_STARTED, self._unfreeze)

    def _unfreeze(self, engine: Engine) -> None:
        """At the start of epoch ``freeze_epochs + 1`` (or of a resumed run's first epoch after it), unfreeze."""
        if not self._frozen or engine.state.epoch <= self.freeze_epochs:
            return
        for parameter in self._frozen:
            parameter.requires_grad_(True)
        logger.info("epoch %d: every weight trains from now on", engine.state.epoch)
        self._frozen = []
