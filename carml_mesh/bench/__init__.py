"""Benchmarks: MLPerf-style scenarios run through a node's HTTP API, their results stored in the node's SQLite."""
