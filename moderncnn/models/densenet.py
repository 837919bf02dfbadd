"""Placeholder until the densenet family lands."""
