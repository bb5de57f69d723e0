"""Training and export: PyTorch models to proven ONNX files with an embedded model contract.

Everything here needs the ``[train]`` extra (PyTorch), imported lazily so that importing this
package, or ``medstream --help``, works without it:

* :mod:`medstream.export.unet`: the reference U-Net.
* :mod:`medstream.export.loaders`: a user's model from ``module:Class`` + weights, TorchScript or ``.pt2``.
* :mod:`medstream.export.exporter`: ``export_model`` (export, check, simplify, contract, proof) and
  ``prove_export``; :class:`~medstream.export.exporter.ExportError`.
* :mod:`medstream.export.model_card`: the card printed after an export (parameters, MACs, hash).
* :mod:`medstream.export.train`: the training loop, on the phantom or on a folder of frames + masks.
* :mod:`medstream.export.reference_models`: trains and exports the two bundled models reproducibly.
"""
