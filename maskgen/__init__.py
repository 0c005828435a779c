"""maskgen: masked-face recognition data and models, offline."""

__version__ = "0.1.0"
