"""Commands that read finished runs: responses (Figure 7), lesion, landscape, gradflow, eval."""
