"""Export trained models to ONNX and TorchScript, prove they compute what PyTorch computes, and run
exported ONNX files without the training config.

- each task exports itself (``Task.export_graph``: plain tensors in, a tuple of tensors out, with
  its output names, dynamic axes and preprocessing; see ``visionkit/tasks/base.py``);
- :mod:`visionkit.export.graph`: the metadata a user needs, written into the file and read back.
- :mod:`visionkit.export.formats`: writing and loading ONNX (``metadata_props``) and TorchScript
  (``_extra_files``) files, and a common runner for both.
- :mod:`visionkit.export.verify`: compare an exported file with PyTorch eager on the config's images.
- :mod:`visionkit.export.runtime`: ``visionkit predict MODEL.onnx`` through onnxruntime.
- :mod:`visionkit.export.api` / :mod:`visionkit.export.cli`: the ``visionkit export`` function and
  its arguments (this package imports neither torch nor onnx until a command runs).
"""

# the default verification tolerance: |exported - eager| <= ATOL + RTOL * |eager| for every value
# (float32 kernels of onnxruntime and PyTorch differ by about 1e-6 relative on our models)
DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-3
