"""edgekd: take a sequential recommender from training data to an edge device.

The flow (docs/design.md): data -> train (teacher) -> distill (student) -> export -> bench -> report.
`import edgekd` stays light: torch and the runtimes are imported by the stages that use them.
"""
__version__ = "0.1.0"
