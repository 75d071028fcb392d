"""What a node needs from the application it runs in: devices, model folders, progress, interrupts, messages.

:class:`ComfyHost` answers from a running ComfyUI (``comfy.model_management``, ``folder_paths``,
``comfy.utils.ProgressBar``, ``PromptServer``), imported only when a node runs there.
:class:`LocalHost` answers without ComfyUI (scripts and CI tests) and keeps what it was sent, so
the node logic runs the same way in both and the ComfyUI-specific layer stays this one file.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch
from PIL import Image

MODEL_FOLDER = "specar"  # models/specar/ in ComfyUI: model files and model directories
PREVIEW_MAX_SIZE = 512


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

    def device(self) -> torch.device:
        return self._device

    def offload_device(self) -> torch.device:
        return torch.device("cpu")

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


def register_comfy_model_folder() -> None:
    """Make ``models/specar/`` a ComfyUI model folder (users may add more in extra_model_paths.yaml)."""
    import folder_paths

    folder_paths.add_model_folder_path(MODEL_FOLDER, os.path.join(folder_paths.models_dir, MODEL_FOLDER))


def comfy_model_folders() -> list[Path]:
    import folder_paths

    return [Path(p) for p in folder_paths.get_folder_paths(MODEL_FOLDER)]
