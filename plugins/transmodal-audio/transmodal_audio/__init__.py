"""transmodal-audio: WAV folders as datasets and a log-mel CNN audio encoder.

Importing this package (what plugin discovery does) loads only the parameter models; torch is imported when a
component is built.
"""

__version__ = "0.1.0"
