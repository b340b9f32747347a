"""The support desk's Django app (models only)."""
