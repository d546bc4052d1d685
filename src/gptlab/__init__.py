"""gptlab: pre-train GPT-2-style base models and measure which training interventions pay off."""

__version__ = "0.1.0"
