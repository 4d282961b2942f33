"""Declarative TOML suites, installed as upbench.suites (package data)."""
