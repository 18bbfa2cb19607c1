"""Executors: where inference runs (worker subprocesses now, containers later). Import-light."""
