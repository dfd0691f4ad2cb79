"""Evidence: shadow comparisons, judging, the report and bake-offs."""
