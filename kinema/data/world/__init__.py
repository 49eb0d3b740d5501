"""The procedural world: seeded, captioned clips of coloured shapes that move by simple physics.

kinema's bundled model trains on it and the world benchmark (``kinema.eval.world``) scores
generated videos against it, since every clip has a ground truth. numpy only.
"""
