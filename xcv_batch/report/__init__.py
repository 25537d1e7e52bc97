"""Ranking and showing the methods: statistics, the summary, report.html and image panels."""
