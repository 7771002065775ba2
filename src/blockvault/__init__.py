"""blockvault: disk imaging and backup."""

__version__ = "0.1.0"
