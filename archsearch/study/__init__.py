"""Studies: Optuna trials around the trainer. The report reproduced as fixed trials, open searches over declarative
spaces, worker processes on shared storage, trial weights as artifacts, export of a trial's run, the analysis of a
study, and optuna-dashboard on the same storage. The only layer that imports Optuna (private calls: _optuna.py)."""

from archsearch.study.analysis import analyze, analyze_study, trial_row
from archsearch.study.artifacts import artifact_store, read_trial_weights, save_trial_weights
from archsearch.study.dashboard import dashboard_url, serve
from archsearch.study.export import ParetoChoiceNeeded, export_trial
from archsearch.study.finalists import FinalConfig, final_summary, run_finalists
from archsearch.study.kinds import STUDY_KINDS, StudyKind, kind_of, run_worker
from archsearch.study.objective import Hooks, TrainingDiverged, run_trial
from archsearch.study.report import ReportRow, parse_indexes, report_rows
from archsearch.study.reproduce import ReproduceConfig, ReproduceResult, reproduce_study
from archsearch.study.search import PRUNERS, SAMPLERS, SearchConfig, search_study, search_summary
from archsearch.study.spaces import BUILTIN_SPACES, Space, SpaceError, load_space
from archsearch.study.storage import DEFAULT_STORAGE, load_existing_study, open_storage

__all__ = [
    "BUILTIN_SPACES",
    "DEFAULT_STORAGE",
    "PRUNERS",
    "SAMPLERS",
    "STUDY_KINDS",
    "FinalConfig",
    "Hooks",
    "ParetoChoiceNeeded",
    "ReportRow",
    "ReproduceConfig",
    "ReproduceResult",
    "SearchConfig",
    "Space",
    "SpaceError",
    "StudyKind",
    "TrainingDiverged",
    "analyze",
    "analyze_study",
    "artifact_store",
    "dashboard_url",
    "export_trial",
    "final_summary",
    "kind_of",
    "load_existing_study",
    "load_space",
    "open_storage",
    "parse_indexes",
    "read_trial_weights",
    "report_rows",
    "reproduce_study",
    "run_finalists",
    "run_trial",
    "run_worker",
    "save_trial_weights",
    "search_study",
    "search_summary",
    "serve",
    "trial_row",
]
