"""He et al. 2015 from run directories: Figure 6 (figures), Table 6 (tables), the paper's
numbers and recipe (paper) and the reproduction report with its verdicts (reproduction). Import
from the module that defines a name: this file imports nothing."""
