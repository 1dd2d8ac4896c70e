"""rtd_lab: distil step-by-step reasoning from a teacher LM into a small student."""

__version__ = "0.1.0"
