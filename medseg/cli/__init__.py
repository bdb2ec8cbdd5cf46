"""Command lines: each module parses its arguments, calls one ``medseg.workflows`` function and prints.
Nothing in medseg imports this package; ``python -m medseg.<cmd>`` runs ``medseg.cli.<cmd>.main``."""
