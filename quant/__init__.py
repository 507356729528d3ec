"""INT8 quantization (calibration readers, QDQ, accuracy guard, outlier statistics).

Nothing here yet: `edgert quantize` is the next issue. The package exists so the
`edgert.quant` namespace is laid out as DESIGN.md describes.
"""
