"""Solvers (how a model answers), the evaluation harness and reports."""
