"""Tiny configs shared by test folders (each test stays well under a second of compute)."""

from __future__ import annotations

from typing import Any


def tiny_smlm_config(**sections: Any) -> Any:
    """16x16 frames and tiny networks; ``sections`` add or replace whole config sections."""
    from neurotrain.tasks.smlm.config import SMLMConfig

    data: dict[str, Any] = {
        "simulate": {"frame_size": (16, 16), "density_per_um2": 1.0},
        "model": {"name": "SigmaMUNet", "depth_shared": 1, "depth_union": 1, "initial_features": 8, "inter_features": 8},
        "evaluate": {"n_frames": 12},
        "inference": {"device": "cpu", "max_memory_gb": 0.5},
        "data": {"batch_size": 8},
    }
    data.update(sections)
    return SMLMConfig(**data)
