"""Structure-aware fuzzing of the relay core and the client link (issue 8)."""
