"""transmodal-vision: image backbones and image datasets for transmodal.

Importing this package (what plugin discovery does) loads only the parameter models; torchvision is
imported when a component is built.
"""

__version__ = "0.1.0"
