"""Models behind one seam: the Model protocol, the OpenAI-compatible client and the embedded local tier."""
