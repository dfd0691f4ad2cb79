"""The bottom layer: errors, the effective config, prices, token counts, receipts and tracing."""
