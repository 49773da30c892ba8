"""Reporting: what runs wrote, turned into tables, CSV files and figures (no method code).

curves      label-efficiency maths (aggregation, K to reach a level, label reduction) and a run's summary
comparison  sorters beside E-Sort: rows, speed ratios, K to reach a sorter, comparison table and CSV
tables      THE text-table writer (Column, table_lines) and the experiments' tables
csv_writer  THE CSV writer (atomic)
results     results.json files of run/sweep folders read back as flat rows; pivots
plots       every figure, from loaded results (saved on an Agg canvas, or shown through pyplot)
summary     a recording and its ground truth in numbers and as a unit table
"""
