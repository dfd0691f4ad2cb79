"""The call path: routing, options, budgets, the composed model path, the runner and batches."""
