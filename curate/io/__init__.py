"""Readers and writers for Parquet, WebDataset and img2dataset data."""
