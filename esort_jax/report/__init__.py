"""Reporting: label-efficiency curves, comparison tables, text tables, CSV files and plots."""
