"""Tool specs: the spec model, loading and checking spec files, prompt rendering, validators, comparisons."""
