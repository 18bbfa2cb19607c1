"""Tracing: Zipkin v2 spans kept by every node, with no central collector."""
