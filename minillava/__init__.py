"""minillava: an annotated, runnable walkthrough of LLaVA ("Visual Instruction Tuning", Liu et al., NeurIPS 2023)."""

__version__ = "0.1.0"
