"""BEIR evaluation of mvr indexes (installed as ``mvr.eval``)."""
