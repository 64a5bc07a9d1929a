"""transmodal-timm: any timm image model as a transmodal backbone.

Importing this package (what plugin discovery does) loads only the parameter models; timm and torch are imported
when the backbone is built.
"""

__version__ = "0.1.0"
