"""Deterministic training: the same commit, data and seed on the same machine give the same
out-of-fold predictions for every model (measured in the README's "Reruns" section).

What is fixed, and where:

* **Random numbers** — every draw comes from the study's seeds: splits (scikit-learn,
  ``seed``), views and batch order (NumPy generators), weights and dropout
  (``keras.utils.set_random_seed`` before every network is built and trained).
* **Op determinism** — :func:`enable` calls ``tf.config.experimental.enable_op_determinism()``
  once per process: TensorFlow then picks deterministic kernels (and raises for an op that has
  none instead of silently varying) and runs tf.data stages in order.
* **Process environment** — :data:`ENVIRONMENT` is exported by the runner to every notebook
  kernel: ``PYTHONHASHSEED=0`` (string-hash order), ``TF_DETERMINISTIC_OPS=1`` (the same
  switch for code that imports TensorFlow before :func:`enable`).
* **Threads** — ``intra_op`` / ``inter_op`` thread counts are left at TensorFlow's defaults
  (the machine's core count): reductions split work by the thread count, which is fixed on one
  machine; another core count may change the last bits. ``threads`` pins both when asked.
* **oneDNN** (``TF_ENABLE_ONEDNN_OPTS``) is left on: with a fixed thread count its kernels
  gave identical results here (measured, see the README).
* **The feature cache** stores frozen-network outputs once; a rerun with the cache and one
  that recomputes it are compared in the end-to-end test.

This module does not import TensorFlow at import time (the runner imports it).
"""

from __future__ import annotations

import os

#: exported by the runner to the notebook kernels (they inherit the runner's environment)
ENVIRONMENT = {"PYTHONHASHSEED": "0", "TF_DETERMINISTIC_OPS": "1"}

_enabled = False


def export_environment(env: dict | None = None) -> dict:
    """Set :data:`ENVIRONMENT` in ``env`` (default ``os.environ``) unless the user set a value."""
    env = os.environ if env is None else env
    for k, v in ENVIRONMENT.items():
        env.setdefault(k, v)
    return {k: env[k] for k in ENVIRONMENT}


def enable(threads: int | None = None) -> dict:
    """Switch TensorFlow to deterministic ops (once per process); optionally pin thread counts.

    Returns what was set (recorded with the results). Thread counts can only be set before
    TensorFlow starts its runtime; if that already happened they are left as they are.
    """
    global _enabled
    import tensorflow as tf

    info = {"op_determinism": True}
    if not _enabled:
        tf.config.experimental.enable_op_determinism()
        _enabled = True
    if threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(int(threads))
            tf.config.threading.set_inter_op_parallelism_threads(int(threads))
        except RuntimeError:  # the runtime is already initialised
            pass
    info["intra_op_threads"] = tf.config.threading.get_intra_op_parallelism_threads()
    info["inter_op_threads"] = tf.config.threading.get_inter_op_parallelism_threads()
    info["onednn"] = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on)")
    info["pythonhashseed"] = os.environ.get("PYTHONHASHSEED", "random")
    return info
