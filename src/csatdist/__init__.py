"""csatdist: a self-hostable Messaging CSAT Distribution service."""

__version__ = "0.1.0"
