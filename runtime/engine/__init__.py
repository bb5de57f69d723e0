"""TensorRT engines: build from ONNX (:mod:`.builder`), cache and validate (:mod:`.cache`), optimization
profiles from the model contract (:mod:`.profiles`) and the fp16 ONNX conversion TensorRT 11 needs
(:mod:`.fp16`).

Only :mod:`.builder` needs the full ``tensorrt`` package, imported lazily; the rest runs anywhere.
"""
