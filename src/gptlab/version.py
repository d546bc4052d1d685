"""gptlab's version, on the ground floor so the files a run or a dataset writes can record it without importing
the package's front door."""

__version__ = "0.1.0"
