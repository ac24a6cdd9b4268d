"""Analysis half of AutoChunk codegen: loading, capture, the IR and the planning passes.

Nothing here imports jinja2, libcst or black: emission lives in `codegen/`.
"""
