"""Emission half of AutoChunk codegen: generated modules, formatting, verification and the CLI."""

__version__ = "0.1.0"
