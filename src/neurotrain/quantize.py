"""Int8 models for deployment: static (calibrated) QDQ quantisation and quantisation-aware training.

Two jobs, two modules; every name stays importable from here:

- ``quantize_static.py``: static int8 (:func:`quantize_static_onnx`): onnxruntime's ``quantize_static`` in QDQ
  format, activation ranges calibrated on batches of real inputs (min-max, entropy or percentile), 7-bit
  weights (``reduce_range``) on CPUs without VNNI (:func:`resolve_reduce_range`), and the int8 ranges
  shared with QAT.
- ``qat.py``: quantisation-aware training (:func:`qat_finetune`: FX graph-mode fake quantisation, eager mode
  as the fallback), the QDQ ONNX export of the fake-quant model checked in onnxruntime (:func:`export_qat`)
  with its graph fixes, and :func:`float_weights` (the fine-tuned weights back into the float network, for
  static calibration).
"""

from __future__ import annotations

from neurotrain.qat import (  # noqa: F401  (re-exported: the old import paths keep working)
    QAT_TOLERANCE_STEPS,
    QATResult,
    _fold_weight_quantize,
    _output_step,
    _scalar_qparams,
    _widen_weight_ranges,
    export_qat,
    float_weights,
    prepare_qat,
    qat_finetune,
    qat_qconfig,
)
from neurotrain.quantize_static import (  # noqa: F401
    ACT_QMAX,
    ACT_QMIN,
    CALIBRATION_METHODS,
    VNNI_FLAGS,
    W_QMAX,
    W_QMAX_REDUCED,
    W_QMIN,
    W_QMIN_REDUCED,
    ArrayCalibrationReader,
    _as_reader,
    _first_line,
    _tmpdir_next_to,
    _to_numpy,
    cpu_has_vnni,
    quantize_static_onnx,
    resolve_reduce_range,
)
