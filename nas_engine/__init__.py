"""nas_engine: the NASNet search space, child networks, training and search strategies.

Pure Python + PyTorch. This package never imports Django, Celery or Channels; the web
application and the workers call into it, not the other way round.

`nas_engine.load_model(path)` turns a trained bundle (directory or zip) into a module
that takes images and returns logits (`nas_engine/model.py`).
"""

__version__ = "0.1.0"
__all__ = ["load_model"]


def __getattr__(name: str):
    # Imported on first use: `import nas_engine.genotype` (the web app's forms) should not
    # pay for torch and the network code.
    if name == "load_model":
        from nas_engine.model import load_model

        return load_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
