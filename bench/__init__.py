"""Benchmarks behind `virtbus bench ...`: each measures its raw baseline in the same run."""
