"""HTTP handlers: thin, they parse, call the serving layer and shape responses."""
