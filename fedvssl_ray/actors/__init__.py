"""Everything that knows about Ray actors: client actors, their pool, and the driver actor."""
