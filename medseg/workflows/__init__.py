"""medseg's commands as plain Python functions: ``medseg.workflows.train.run(...)`` does what
``python -m medseg.train`` does, callable from a notebook or a script; ``medseg.cli`` only parses
arguments, calls one of these and prints."""
