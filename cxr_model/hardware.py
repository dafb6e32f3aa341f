"""Where training runs: every visible GPU (MirroredStrategy over two or more), else the CPU.

Mixed float16 is used on GPUs (``auto``), float32 elsewhere; XLA only when asked for. The
:class:`Hardware` chosen is recorded with the training result.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import keras
import tensorflow as tf

if TYPE_CHECKING:
    from cxr_model.train import TrainParams

MIXED_POLICY = "mixed_float16"
FLOAT_POLICY = "float32"


@dataclass(frozen=True)
class Hardware:
    """Where and how training runs: the distribution strategy and its devices."""

    strategy: tf.distribute.Strategy
    devices: list[str]
    mixed_precision: bool
    jit_compile: bool

    @property
    def replicas(self) -> int:
        return self.strategy.num_replicas_in_sync


def _short_name(device: str) -> str:
    """``/job:localhost/replica:0/task:0/device:GPU:0`` → ``GPU:0``."""
    return device.rsplit("device:", 1)[-1].lstrip("/")


def choose_hardware(params: TrainParams, devices: Sequence[str] | None = None) -> Hardware:
    """Strategy, devices, precision and XLA for ``params`` on this machine.

    ``devices`` (TensorFlow logical device names such as ``/cpu:0``) overrides the default, all
    visible GPUs, falling back to the CPU. Two or more devices train with MirroredStrategy.
    """
    names = list(devices or [gpu.name for gpu in tf.config.list_logical_devices("GPU")])
    if len(names) > 1:
        strategy: tf.distribute.Strategy = tf.distribute.MirroredStrategy(names)
        used = [_short_name(d) for d in strategy.extended.worker_devices]
    else:
        strategy = tf.distribute.get_strategy()
        used = [_short_name(names[0])] if names else ["CPU:0"]
    on_gpu = any("GPU" in name.upper() for name in used)
    mixed = params.mixed_precision == "on" or (params.mixed_precision == "auto" and on_gpu)
    return Hardware(strategy, used, mixed_precision=mixed, jit_compile=params.jit_compile == "on")


@contextlib.contextmanager
def dtype_policy(name: str) -> Iterator[None]:
    """Build models under the global Keras dtype policy ``name``; restore the old one after."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)
