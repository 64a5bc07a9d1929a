"""transmodal-peft: parameter-efficient adapters (LoRA, DoRA, IA3 through ``peft``) for transmodal models.

Importing this package (what plugin discovery does) loads only the parameter models; ``peft`` is imported
when an adapter strategy is built or a run's adapters are exported.
"""

__version__ = "0.1.0"
