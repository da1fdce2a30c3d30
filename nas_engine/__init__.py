"""nas_engine: the NASNet search space, child networks, training and search strategies.

Pure Python + PyTorch. This package never imports Django, Celery or Channels; the web
application and the workers call into it, not the other way round.
"""

__version__ = "0.1.0"
