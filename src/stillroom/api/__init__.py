"""HTTP only: thin handlers over the domain modules."""
