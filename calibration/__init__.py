"""INT8 calibration that TensorRT 10 and 11 both accept, with an accuracy gate.

``medstream calibrate`` (:func:`medstream.calibration.pipeline.calibrate`) collects calibration frames
through the runtime's own sources and preprocessing (:mod:`.data`), runs the FP32 model once to
gather activation statistics (:mod:`.stats`, cached by :mod:`.cache`), writes symmetric int8 QDQ
for TensorRT and uint8-activation QDQ for ONNX Runtime CPU (:mod:`.quantize`), checks the TensorRT
file against TensorRT's Q/DQ rules (:mod:`.validator`), scores both against FP32 on held-out frames
(:mod:`.gate`), and writes a TensorRT calibration cache for 8.x-10.x toolchains (:mod:`.trt_cache`).
See docs/CALIBRATION.md.
"""
