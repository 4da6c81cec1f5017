"""Figures and reports from splitsim result folders (never imports the engine)."""
