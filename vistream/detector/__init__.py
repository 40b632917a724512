"""Model backends behind one small interface (`Detector`), chosen by `model.backend`.

Importing this package does not import torch: only the scheduler process,
which owns the model, pays for it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from vistream.detector.base import FAULT_FILE_ENV, Detector, FaultHook, ModelConfigError, ModelLoadError

if TYPE_CHECKING:
    from vistream.config.models import ModelConfig

__all__ = ["Detector", "ModelConfigError", "ModelLoadError", "load_detector"]

log = logging.getLogger(__name__)


def load_detector(cfg: ModelConfig, max_batch: int) -> Detector:
    """Load the configured model, ready for batches of up to `max_batch` frames."""
    # Every backend listed in the config goes through Ultralytics' AutoBackend,
    # which reads .pt, .onnx (ONNX Runtime), *_openvino_model/ and .engine
    # (TensorRT) exports; a backend with needs of its own gets its own module here.
    from vistream.detector.ultralytics import UltralyticsDetector

    detector: Detector = UltralyticsDetector(cfg, max_batch)
    fault_file = os.environ.get(FAULT_FILE_ENV)
    if fault_file:  # tests only: batches hang or raise when this file says so
        log.warning("test hook: batches hang or raise as %s says (%s)", fault_file, FAULT_FILE_ENV)
        detector = FaultHook(detector, Path(fault_file))
    return detector
