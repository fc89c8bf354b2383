"""Promotion and state reports: accuracy matrix, forgetting metrics, decision, deltas, lineage."""

from .data import AccuracyMatrix, ReportData, accuracy_matrix, build_report
from .render import REPORT_FORMATS, heatmap_png, render_report

__all__ = ["REPORT_FORMATS", "AccuracyMatrix", "ReportData", "accuracy_matrix", "build_report",
           "heatmap_png", "render_report"]
