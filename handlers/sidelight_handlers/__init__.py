"""Modality handlers: turn files into model inputs and attributions into pictures.

`image` and `tabular` hold the preprocessing, the interpretable representation and the
rendering for their kind of input; the core and the CLI use them. They follow TorchServe's
handler vocabulary (preprocess / postprocess), so the same code serves inside TorchServe.
"""
