"""What a node needs from the application it runs in: devices, model folders, progress, interrupts, messages.

:class:`ComfyHost` answers from a running ComfyUI (``comfy.model_management``, ``folder_paths``,
``comfy.utils.ProgressBar``, ``PromptServer``), imported only when a node runs there.
:class:`LocalHost` answers without ComfyUI (scripts and CI tests) and keeps what it was sent, so
the node logic runs the same way in both and the ComfyUI-specific layer stays this one file.
"""

from __future__ import annotations

import os
import weakref
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Protocol, Sequence

import torch
from PIL import Image

MODEL_FOLDER = "specar"  # models/specar/ in ComfyUI: model files and model directories
PREVIEW_MAX_SIZE = 512


class Loadable(Protocol):
    """A SpecAR model as hosts load it: a target, a drafter, a tree head or a continuous model."""

    def networks(self) -> list[torch.nn.Module]: ...

    def to(self, device: torch.device) -> object: ...


class Host(ABC):
    """The application around a node run."""

    node_id: str | None = None  # the node's id in the graph (ComfyUI's UNIQUE_ID)

    @abstractmethod
    def device(self) -> torch.device:
        """Where models run."""

    @abstractmethod
    def offload_device(self) -> torch.device:
        """Where models wait between runs."""

    @abstractmethod
    def load(self, models: Sequence[Loadable], working_bytes: int = 0) -> torch.device:
        """Put ``models`` on the compute device for a run, with room for ``working_bytes`` beside their
        weights, and return that device. Models stay there after the run (the host decides when to
        offload them)."""

    @abstractmethod
    def model_folders(self) -> list[Path]:
        """Folders searched for model files and model directories."""

    @abstractmethod
    def progress(self, value: int, total: int, preview: Image.Image | None = None) -> None:
        """Report ``value`` of ``total`` done, optionally with a preview picture."""

    @abstractmethod
    def interrupted(self) -> bool:
        """Whether the user asked to stop (checked between target forwards)."""

    @abstractmethod
    def raise_interrupted(self) -> None:
        """End the node run the way the application expects after an interrupt."""

    @abstractmethod
    def send(self, event: str, data: dict[str, Any]) -> None:
        """Send a message to the user interface that started the run."""


class NodeInterrupted(RuntimeError):
    """A run outside ComfyUI was interrupted (ComfyUI uses its own exception)."""


class LocalHost(Host):
    """A host without ComfyUI: the CPU (or a given device), given folders, and records of all it was sent."""

    def __init__(
        self,
        folders: list[Path] | None = None,
        device: str = "cpu",
        node_id: str | None = "1",
        interrupt_after: int | None = None,
    ) -> None:
        self.folders = list(folders or [])
        self._device = torch.device(device)
        self.node_id = node_id
        self.interrupt_after = interrupt_after  # say "interrupted" from this progress report on
        self.progress_reports: list[tuple[int, int, bool]] = []
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self.loads: list[tuple[tuple[Loadable, ...], int]] = []  # (models, working bytes) of every load

    def device(self) -> torch.device:
        return self._device

    def offload_device(self) -> torch.device:
        return torch.device("cpu")

    def load(self, models: Sequence[Loadable], working_bytes: int = 0) -> torch.device:
        self.loads.append((tuple(models), working_bytes))
        for model in models:
            model.to(self._device)
        return self._device

    def model_folders(self) -> list[Path]:
        return self.folders

    def progress(self, value: int, total: int, preview: Image.Image | None = None) -> None:
        self.progress_reports.append((value, total, preview is not None))

    def interrupted(self) -> bool:
        return self.interrupt_after is not None and len(self.progress_reports) >= self.interrupt_after

    def raise_interrupted(self) -> None:
        raise NodeInterrupted("interrupted by the user")

    def send(self, event: str, data: dict[str, Any]) -> None:
        self.messages.append((event, data))


class ComfyHost(Host):
    """The running ComfyUI; construct it only inside a node's execution."""

    def __init__(self, node_id: str | None = None) -> None:
        import comfy.model_management as model_management
        import comfy.utils

        self.node_id = node_id
        self._mm = model_management
        self._bar = comfy.utils.ProgressBar(1, node_id=node_id)

    def device(self) -> torch.device:
        return self._mm.get_torch_device()

    def offload_device(self) -> torch.device:
        return self._mm.unet_offload_device()

    def load(self, models: Sequence[Loadable], working_bytes: int = 0) -> torch.device:
        """Through ComfyUI's model management: it frees other models for the room, counts ours among its
        loaded models, keeps them on the device between runs and offloads them when others need it.
        The whole of each model loads (a decoding loop cannot stream weights), under --lowvram too."""
        patchers = [self._patcher(model) for model in models]
        self._mm.load_models_gpu(patchers, memory_required=working_bytes, force_full_load=True)
        device = self.device()
        for model in models:
            model.to(device)  # state kept outside the networks follows them
        return device

    def _patcher(self, model: Loadable) -> Any:
        patcher = _PATCHERS.get(model)
        if patcher is None:
            import comfy.model_patcher

            weights = SpecARWeights(model.networks())
            patcher = comfy.model_patcher.ModelPatcher(
                weights, load_device=self.device(), offload_device=self.offload_device()
            )
            _PATCHERS[model] = patcher
        return patcher

    def model_folders(self) -> list[Path]:
        return comfy_model_folders()

    def progress(self, value: int, total: int, preview: Image.Image | None = None) -> None:
        self._bar.update_absolute(value, total, ("JPEG", preview, PREVIEW_MAX_SIZE) if preview is not None else None)

    def interrupted(self) -> bool:
        return self._mm.processing_interrupted()

    def raise_interrupted(self) -> None:
        self._mm.throw_exception_if_processing_interrupted()

    def send(self, event: str, data: dict[str, Any]) -> None:
        from server import PromptServer

        server = PromptServer.instance
        server.send_sync(event, data, server.client_id)


class SpecARWeights(torch.nn.ModuleList):
    """The networks of one SpecAR model as the single module ComfyUI's ``ModelPatcher`` manages (and
    names in its log: "Requested to load SpecARWeights")."""


# One patcher per loaded SpecAR model, for as long as the model lives (ComfyUI's node cache holds it).
_PATCHERS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def register_comfy_model_folder() -> None:
    """Make ``models/specar/`` a ComfyUI model folder (users may add more in extra_model_paths.yaml)."""
    import folder_paths

    folder_paths.add_model_folder_path(MODEL_FOLDER, os.path.join(folder_paths.models_dir, MODEL_FOLDER))


def comfy_model_folders() -> list[Path]:
    import folder_paths

    return [Path(p) for p in folder_paths.get_folder_paths(MODEL_FOLDER)]
