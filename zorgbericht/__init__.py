"""zorgbericht: share imaging studies through a secure 14-day link."""

__version__ = "0.1.0"
