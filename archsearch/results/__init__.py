"""Results as plain data, and written out: statistics of runs, the report's comparisons, what a study's trials say,
tables, Markdown and plots. Imports only :mod:`archsearch.core`: rows in, text and pictures out."""

from archsearch.results.analysis import activation_effect, depth_effect, pareto_front
from archsearch.results.compare import COMPARISONS, NOTES, against_reported, compare
from archsearch.results.files import check_writable, output_dir, save_figure
from archsearch.results.render import format_tables, write_analysis
from archsearch.results.reproduction import write_outputs
from archsearch.results.stats import t_interval, welch
from archsearch.results.tables import reproduction_lines, reproduction_tables, search_lines, search_tables, train_tables

__all__ = [
    "COMPARISONS",
    "NOTES",
    "activation_effect",
    "against_reported",
    "check_writable",
    "compare",
    "depth_effect",
    "format_tables",
    "output_dir",
    "pareto_front",
    "reproduction_lines",
    "reproduction_tables",
    "save_figure",
    "search_lines",
    "search_tables",
    "t_interval",
    "train_tables",
    "welch",
    "write_analysis",
    "write_outputs",
]
