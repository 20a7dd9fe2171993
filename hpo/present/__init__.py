"""Showing results: pure figure builders, optuna-dashboard publishing and server, the HTML report,
progress displays."""
