"""Views that are not reports: the live monitor of runs (status), the teaching view of one
Transformer block (block) and the table of named models (models). Import from the module that
defines a name: this file imports nothing, so `resexp status` does not pay for torch."""
