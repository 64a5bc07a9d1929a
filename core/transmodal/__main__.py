"""``python -m transmodal``: the same command as ``transmodal``."""

from transmodal.cli import console_main

console_main()
