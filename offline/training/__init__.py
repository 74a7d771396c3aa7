"""Training tasks: what each model learns from, and the losses they own."""
