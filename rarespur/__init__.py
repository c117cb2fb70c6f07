"""rarespur: plant rare spurious patterns, train, and measure what the network learned."""

__version__ = "0.1.0"
