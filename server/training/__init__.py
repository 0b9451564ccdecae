"""Cloud-side trainers for the SecDOOD models."""
