"""Placeholder until the resnet family lands."""
