"""transmodal-text: text as a modality for transmodal.

Kept empty on purpose: discovery imports :mod:`transmodal_text.plugin`, which must not import
``tokenizers`` or build anything; the components live in modules imported when they are built.
"""

__version__ = "0.1.0"
