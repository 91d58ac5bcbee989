"""Callbacks for training frameworks, one module each, imported only when asked for:

- `producers.integrations.lightning.StepstreamCallback` (PyTorch Lightning 2.x,
  ``pip install 'stepstream[lightning]'``)
- `producers.integrations.transformers.StepstreamCallback` (Hugging Face ``Trainer``,
  ``pip install 'stepstream[transformers]'``)

Importing `producers` (or this package) imports neither framework.
"""
