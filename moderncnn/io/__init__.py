"""The bottom layer: errors, safe checkpoint reading, downloads, atomic writes and the model card.

Nothing here imports another moderncnn package; every other package may import it.
"""
