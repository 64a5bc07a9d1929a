"""Attention fusion operators for transmodal, registered through the ``transmodal`` entry-point group.

Importing this package imports only the light registration module; the operators load when built.
"""

__version__ = "0.1.0"
