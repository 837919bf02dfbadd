"""Placeholder until the googlenet family lands."""
