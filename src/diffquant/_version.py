"""diffquant's own version, in a module of its own: code inside the package imports it from here,
never from ``diffquant`` itself, whose facade functions import the pipeline (that would be a cycle)."""

__version__ = "0.1.0"
