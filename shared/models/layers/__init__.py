"""Reusable building blocks; ``shared/models`` assembles them under checkpoint names."""
