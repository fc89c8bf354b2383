"""Promotion and state reports: accuracy matrix, forgetting metrics, decision, deltas, lineage."""

from .data import ReportData, build_report, suite_scores
from .render import REPORT_FORMATS, heatmap_png, render_report

__all__ = ["REPORT_FORMATS", "ReportData", "build_report", "heatmap_png", "render_report", "suite_scores"]
