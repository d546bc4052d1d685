"""Print docs/configuration.md from the config classes: python scripts/config_doc.py > docs/configuration.md"""

from gptlab.config import markdown_reference

print(markdown_reference(), end="")
