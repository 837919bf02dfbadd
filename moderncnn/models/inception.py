"""Placeholder until the inception family lands."""
