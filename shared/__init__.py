"""Code that both the offline worker and the online gateway import."""
