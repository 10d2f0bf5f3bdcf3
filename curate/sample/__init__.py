"""Builders of the sample data the project works on here."""
