"""The Transformer norm-placement study from run directories: the runs grouped by placement
(placements), the table (table), the figure (figure), the learning-rate sweep (lr) and the
block probes (probes). Import from the module that defines a name: this file imports nothing."""
