"""The quality report: metrics between feature sets, verdicts, report.json and report.html."""
