"""The OpenAI-facing data plane: routing a request to its model, estimating what it
needs, and forwarding it byte for byte."""
