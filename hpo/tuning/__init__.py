"""Tuning machinery on Optuna and SQLAlchemy (no torch, no data): the storage and its outages,
claim locks, the grid runner, and the records hpo keeps in the storage."""
